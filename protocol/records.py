"""Record keys, message types and the protocol version that every message carries.

Flower's strategies are told these keys explicitly (`server.strategy_factory`), so renaming one
here renames it everywhere.
"""

from __future__ import annotations

from typing import Literal

# Bumped whenever a message's content changes shape; clinics and coordinators upgrade at different
# times, and a mismatch must be one clear rejection, not a confusing failure later.
PROTOCOL_VERSION = 5
PROTOCOL_VERSION_KEY = "protocol-version"

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
SITE_KEY = "site"
SITE_NAME_KEY = "name"
GRADCAM_ARRAYS_KEY = "gradcam"
GRADCAM_META_KEY = "gradcam-meta"
GRADCAM_HEATMAPS = "heatmaps"
GRADCAM_IMAGES = "images"
GRADCAM_LABELS = "labels"
GRADCAM_PREDICTIONS = "predictions"
# What of a Grad-CAM sample a site lets leave it: nothing, the heat map alone, or the heat map
# over its radiograph (images leave the site).
PrivacyPolicy = Literal["none", "heatmap", "overlay"]
# The metric Flower's weighted strategies weigh each reply by.
WEIGHT_KEY = "num-examples"

# BatchNorm re-estimation for the aggregated weights, between training and evaluation.
STATISTICS_ACTION = "batchnorm_statistics"
STATISTICS_MESSAGE = f"query.{STATISTICS_ACTION}"  # Flower message type: category.action

# Who a node is: a clinic answers with its site name only, so a round can draw clinics by name.
ROLL_CALL_ACTION = "roll_call"
ROLL_CALL_MESSAGE = f"query.{ROLL_CALL_ACTION}"

# The opt-in cross-site round after the last federated round: a clinic trains a model on its own
# images alone and returns it, then every sampled clinic scores each such model and the global one.
LOCAL_MODEL_ACTION = "local_model"
LOCAL_MODEL_MESSAGE = f"query.{LOCAL_MODEL_ACTION}"
EVALUATE_MODEL_ACTION = "evaluate_model"
EVALUATE_MODEL_MESSAGE = f"query.{EVALUATE_MODEL_ACTION}"
