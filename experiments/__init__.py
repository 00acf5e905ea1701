"""Studies behind docs/benchmarks.md, run from a checkout: `python -m experiments.<study>`.

They are not part of the installed package: they read the real data beside the project and
write figures for the docs, which no clinic or coordinator needs.
"""
