"""The Jinja2 template of `report.html` (rendered with autoescaping by `server.report`).

It lives in a Python module rather than a `.j2` file because Flower's app bundle (FAB), which a
deployed SuperExec runs the ServerApp from, carries only Python, TOML, Markdown, YAML and JSON
files: a template file next to the code would be missing there.
"""

REPORT_TEMPLATE = """\
{#- report.html: one self-contained page (inline CSS and base64 PNGs); see server/report.py. -#}
{%- macro table(header, rows) -%}
<table><thead><tr>
{%- for name in header %}<th>{{ name }}</th>{% endfor -%}
</tr></thead><tbody>
{%- for row in rows %}<tr>
  {%- for value in row %}<td>{{ value | fmt }}</td>{% endfor -%}
</tr>{% endfor -%}
</tbody></table>
{%- endmacro -%}
{%- macro png(data, alt, css="plot") -%}
<img class="{{ css }}" alt="{{ alt }}" src="data:image/png;base64,{{ data }}">
{%- endmacro -%}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>HybridNet-XR federated run</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}img.plot{max-width:100%}.gallery{display:flex;flex-wrap:wrap;gap:8px}
p.flag{background:#fdecea;border-left:4px solid #c0392b;padding:6px 10px}
figure{margin:0;width:110px;text-align:center;font-size:10px;overflow-wrap:anywhere}img.gradcam{width:96px;height:96px}
</style>
</head>
<body>
<h1>HybridNet-XR federated run</h1>
<p>{{ run_dir }}</p>
{{ table(["model", "strategy", "rounds", "pre-warm rounds", "classes"],
         [[settings.model, settings.strategy, settings.rounds, settings.prewarm_rounds,
           settings.classes]]) }}
{% if privacy %}
<p>Differential privacy per clinic: (ε = {{ privacy.epsilon }}, δ = {{ privacy.delta }}) over
{{ privacy.rounds }} round(s), noise multiplier {{ privacy.noise_multiplier }}, clipping norm
{{ privacy.clipping_norm }}; covers the model updates, not the metrics or Grad-CAM samples sites
share.</p>
{% else %}
<p>Differential privacy: off.</p>
{% endif %}
{% if threshold %}
<p>Decision threshold of the global model: {{ threshold.threshold | fmt }}, chosen on the
global model's scores pooled over the clinics' validation splits
({{ threshold.images | int }} images; counts per score bin, no image): balanced
accuracy {{ threshold["balanced_accuracy_at_0.5"] | fmt }} at 0.5 and
{{ threshold.balanced_accuracy_at_best | fmt }} at the best edge {{ threshold.best | fmt }}.</p>
{% endif %}
{% if comparison %}
<h2>Federated model against each clinic alone, on the pooled test split
({{ comparison.images }} images)</h2>
<p>The pooled test split was held out of every clinic's data before partitioning and never
trained or tuned on; every model had the same passes over each image.</p>
{{ table(["model"] + evaluation_keys | list, comparison.rows) }}
{% endif %}
{% if worst %}
<p{% if worst.flagged %} class="flag"{% endif %}>{% if worst.flagged %}<strong>Flagged:</strong>
the global model serves this clinic far worse than the others. {% endif %}Worst clinic:
<strong>{{ worst.site }}</strong>, accuracy {{ worst.accuracy | fmt }} on its own test share;
lowest recall of a class it holds: {{ worst.lowest_recall | fmt }}
({{ worst.lowest_recall_class }}).</p>
{% endif %}
{% if final %}
<h2>Global model on each site's test share (round {{ final.round }}
{%- if settings.served_round == "best-validation" %}: the best on the clinics' validation
{%- endif %})</h2>
{{ table(["site"] + evaluation_keys | list, final.rows) }}
{% endif %}
{% if cross_site %}
<h2>Cross-site matrix: every model on every clinic's test share</h2>
{% if cross_site.clinics %}
<p>{{ cross_site.shares }} of {{ cross_site.clinics }} clinic(s) in the matrix; each row "SITE
alone" is a model trained on that clinic's images only, with the federation's budget, shared
because its site config allows it.</p>
{% endif %}
{{ png(cross_site.png, "accuracy of every model on every clinic's test share") }}
{% if cross_site.incidents %}
{{ table(["site", "model", "stage", "reason"], cross_site.incidents) }}
{% endif %}
{% endif %}
<h2>Metrics per site over rounds</h2>
{{ png(metrics_png, "metrics per site over rounds") }}
{% if final and final.confusion_png %}
<h2>Confusion matrices</h2>
{{ png(final.confusion_png, "confusion matrices") }}
{% endif %}
{% if resources %}
<h2>Memory and time per site</h2>
{{ table(["site", "training images", "peak memory MB", "training s", "images/s",
          "skipped files"], resources) }}
{{ png(resources_png, "memory and time per site") }}
{% endif %}
{% if incidents %}
<h2>Rejected updates and failures</h2>
{{ table(["round", "site", "stage", "reason"], incidents) }}
{% endif %}
{% if gallery %}
<h2>Grad-CAM gallery (round {{ gallery.round }})</h2>
{% for site in gallery.sites %}
<h3>{{ site.name }}</h3>
<div class="gallery">
{% for picture in site.pictures %}
{% set alt = "Grad-CAM, true " ~ picture.true ~ ", predicted " ~ picture.predicted %}
<figure>{{ png(picture.png, alt, "gradcam") }}
<figcaption>true: {{ picture.true }}<br>pred: {{ picture.predicted }}</figcaption></figure>
{% endfor %}
</div>
{% endfor %}
{% else %}
<h2>Grad-CAM gallery</h2>
<p>No samples: no site's policy allows any.</p>
{% endif %}
</body>
</html>
"""
