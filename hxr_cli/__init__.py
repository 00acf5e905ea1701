"""The `hxr` command: the one module that sees the library, the Flower apps and the simulations."""
