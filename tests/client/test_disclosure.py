"""A curious coordinator gets no image beyond the clinic's fixed sample set: new seeds, new image
sizes, larger sample requests and repeated evaluations all meet the site's own limits."""

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from client import site_data
from client.client_app import SiteFailure, build_client_app
from client.disclosure import state_file
from client.gradcam_samples import downscaled_uint8, pick_per_class
from client.site_config import SITE_CONFIG_KEY, load_site_config
from client.site_data import load_site_data
from hxr_model.data.phantoms import PHANTOM_CLASSES
from protocol.arrays import to_record
from protocol.records import ARRAYS_KEY, CONFIG_KEY, GRADCAM_ARRAYS_KEY
from protocol.schedule import phase_state
from server.federation import initial_state
from server.run_config import FederationConfig

CLASSES = list(PHANTOM_CLASSES)
PER_CLASS = 1  # the site's cap
SIDE = 16  # the site's cap


@pytest.fixture
def site_toml(tmp_path: Path) -> Path:
    path = tmp_path / "kestrel.toml"
    path.write_text(
        'name = "kestrel"\ndata = "synthetic:120"\nprivacy = "overlay"\ndevice = "cpu"\n'
        f'state_dir = "state"\ngradcam_max_per_class = {PER_CLASS}\ngradcam_max_side = {SIDE}\n'
    )
    return path


def new_run(site: Path) -> Context:
    TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    return Context(1, 7, {SITE_CONFIG_KEY: str(site)}, RecordDict(), {})


def evaluate(context: Context, seed: int, image_size: int, server_round: int = 2) -> Message:
    """An evaluate message as a curious coordinator would send it: any seed, any size, twice
    the samples the site allows, at the largest side the protocol permits."""
    config = FederationConfig(
        classes=CLASSES,
        image_size=image_size,
        seed=seed,
        gradcam_per_class=2 * PER_CLASS,
        gradcam_size=128,
        num_server_rounds=2,
        prewarm_rounds=1,
    )
    content = RecordDict(
        {
            ARRAYS_KEY: to_record(phase_state(initial_state(config), "finetune")),
            CONFIG_KEY: ConfigRecord(
                config.round_instructions(server_round, "finetune").to_config()
            ),
        }
    )
    message = Message(content, dst_node_id=7, message_type="evaluate")
    return build_client_app()(message, context)


def fixed_sample_images(site: Path, image_size: int) -> np.ndarray:
    """The site's sample set: the first images of each class of its evaluation split, which its
    own split seed (drawn once, kept in its state folder) decides."""
    data = load_site_data(load_site_config(site), CLASSES, image_size).evaluation
    chosen = pick_per_class(data.labels, len(CLASSES), PER_CLASS)
    return downscaled_uint8(torch.stack([data[index][0] for index in chosen])[:, 0], SIDE)


def shared_images(reply: Message) -> np.ndarray:
    return reply.content[GRADCAM_ARRAYS_KEY]["images"].numpy()


def test_new_seeds_and_sizes_in_new_runs_return_the_same_fixed_images(site_toml: Path) -> None:
    for image_size in (32, 64):
        expected = fixed_sample_images(site_toml, image_size)
        for seed in range(4):
            images = shared_images(evaluate(new_run(site_toml), seed, image_size))
            assert images.shape == (len(expected), SIDE, SIDE)
            np.testing.assert_array_equal(images, expected)
    assert state_file(load_site_config(site_toml)).exists()
    # What the coordinator varied kept one decoded copy of the site, not one per size and seed.
    assert sum('"kestrel"' in key for key in site_data._CACHE) == 1


def test_a_run_cannot_change_its_image_size_or_evaluate_beyond_its_rounds(site_toml) -> None:
    context = new_run(site_toml)
    first = shared_images(evaluate(context, seed=0, image_size=32))
    with pytest.raises(SiteFailure, match="DisclosureRefused"):
        evaluate(context, seed=0, image_size=64)
    for repeat in range(3):  # 2 declared rounds + a margin of 2 in all
        np.testing.assert_array_equal(
            shared_images(evaluate(context, seed=repeat, image_size=32)), first
        )
    with pytest.raises(SiteFailure, match="DisclosureRefused"):
        evaluate(context, seed=9, image_size=32)
