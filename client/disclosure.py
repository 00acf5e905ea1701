"""What a clinic lets leave it, fixed by the clinic rather than by its coordinator's messages.

A coordinator sends the run's seed, image size and Grad-CAM settings; were the clinic to follow
them blindly, a curious coordinator could change the seed each run (or ask for evaluation many
times a round) and collect a new set of `overlay` images every time. So:
- the split of the clinic's images comes from the site: its `split_seed`, else a seed drawn once
  and kept in the site's state folder, so every run holds out (and samples from) the same images;
- within a run the image size is fixed by the run's first message, and the clinic answers at most
  the declared number of rounds plus a small margin (a resumed run may repeat one) of
  evaluations;
- the number and side of Grad-CAM samples are capped by the site config;
- a model trained on the clinic's images alone leaves it only where the site config allows it
  (`share_local_model`), once a run; and the cross-site round's evaluations of models the
  coordinator sends, a separate budget, are at most the number of models that round declared
  (at most 20 local models and the global one), so crafted models cannot probe the clinic's
  test share without end.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from flwr.app import ConfigRecord, Context, MessageType

from client.site_config import SiteConfig
from hxr_model.atomic_files import write_text_atomic
from hxr_model.data.cache import default_cache_dir
from hxr_model.errors import ConfigError
from protocol.instructions import CrossSiteInstructions, RoundInstructions
from protocol.records import EVALUATE_MODEL_MESSAGE, LOCAL_MODEL_MESSAGE

RUN_STATE_KEY = "hxr-disclosure"
EVALUATION_MARGIN = 2


class DisclosureRefused(ConfigError):
    """The coordinator asked for more than this clinic's policy lets it share."""


def state_file(site: SiteConfig) -> Path:
    folder = site.state_dir or default_cache_dir() / "sites"
    return folder.expanduser() / f"{site.name}.json"


def split_seed(site: SiteConfig) -> int:
    """The seed that splits this site's images: its own, else drawn once and kept on disk."""
    if site.split_seed is not None:
        return site.split_seed
    path = state_file(site)
    if path.exists():
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["split-seed"])
        except (ValueError, KeyError, TypeError) as error:
            reason = f"site state {path} is unreadable ({error}); restore or delete it"
            raise ConfigError(reason) from None
    seed = secrets.randbelow(2**31)
    write_text_atomic(path, json.dumps({"split-seed": seed}) + "\n")
    return seed


def _spend(state: ConfigRecord, key: str, budget: int, what: str) -> None:
    """Count one more `key` in the run's state, refusing beyond `budget`."""
    spent = int(state.get(key, 0))
    if spent >= budget:
        raise DisclosureRefused(f"this run has had its {budget} {what}")
    state[key] = spent + 1


def _declared_models(state: ConfigRecord, instructions: RoundInstructions) -> int:
    """The cross-site round's model count, fixed by its first message in this run."""
    if not isinstance(instructions, CrossSiteInstructions):
        raise DisclosureRefused("a cross-site message without the cross-site instructions")
    declared = int(state.setdefault("cross-site-models", instructions.cross_site_models))
    if instructions.cross_site_models != declared:
        raise DisclosureRefused(
            f"this run's cross-site round declared {declared} models and now asks for "
            f"{instructions.cross_site_models}"
        )
    return declared


def check_request(
    context: Context, site: SiteConfig, instructions: RoundInstructions, message_type: str
) -> None:
    """Refuse what the run did not declare at its start, what the site does not share, and
    evaluations beyond the run's budgets."""
    state = context.state.config_records.get(RUN_STATE_KEY)
    if state is None:
        state = ConfigRecord(
            {
                "image-size": instructions.image_size,
                "rounds": instructions.num_server_rounds,
                "evaluations": 0,
            }
        )
        context.state.config_records[RUN_STATE_KEY] = state
    if instructions.image_size != state["image-size"]:
        raise DisclosureRefused(
            f"this run started at {state['image-size']} px and now asks for "
            f"{instructions.image_size} px"
        )
    if message_type == MessageType.EVALUATE:
        _spend(state, "evaluations", int(state["rounds"]) + EVALUATION_MARGIN, "evaluations")
    elif message_type == LOCAL_MODEL_MESSAGE:
        if not site.share_local_model:
            raise DisclosureRefused(
                f"site {site.name} does not share its local model (share_local_model = false)"
            )
        _declared_models(state, instructions)
        _spend(state, "local-models", 1, "local model")
    elif message_type == EVALUATE_MODEL_MESSAGE:
        budget = _declared_models(state, instructions)
        _spend(state, "cross-site-evaluations", budget, "cross-site evaluations")


def sample_limits(site: SiteConfig, instructions: RoundInstructions) -> tuple[int, int]:
    """(samples per class, side in px) to share: the coordinator's ask within the site's caps."""
    per_class = min(instructions.gradcam_per_class, site.gradcam_max_per_class)
    return per_class, min(instructions.sample_side, site.gradcam_max_side)
