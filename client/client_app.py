"""The clinic's Flower ClientApp: train, statistics, evaluate, roll-call and cross-site messages
in, results out.

`app` serves deployment (`flower-supernode --node-config 'site-config="site.toml"'`) and
simulations (`hxr simulate`, `flwr run`), where a node plays a partition the run config names.
`build_client_app` takes another way to find a node's site (tests hand clinics their own).
"""

from __future__ import annotations

from collections.abc import Callable
from logging import ERROR, INFO
from typing import Any, TypeVar

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common.logger import log
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client.disclosure import check_request
from client.local_model import local_model_round
from client.local_rounds import (
    State,
    evaluate_round,
    finetune_round,
    prewarm_round,
    statistics_round,
)
from client.site_config import (
    SiteConfig,
    site_from_node_config,
)
from client.site_data import SiteData, load_site_data
from protocol.arrays import from_record, to_record
from protocol.instructions import CrossSiteInstructions, LocalModelInstructions, RoundInstructions
from protocol.records import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVALUATE_MODEL_ACTION,
    LOCAL_MODEL_ACTION,
    METRICS_KEY,
    ROLL_CALL_ACTION,
    SITE_KEY,
    STATISTICS_ACTION,
)
from protocol.replies import Metrics, site_record
from protocol.schedule import batchnorm_names

SiteResolver = Callable[[Context], SiteConfig]
# Context.state key of a clinic's own BatchNorm layers under FedBN (kept across rounds).
LOCAL_BATCHNORM_KEY = "local-batchnorm"
Handler = Callable[[Message, Context], Message]
Instructions = TypeVar("Instructions", bound=RoundInstructions)


class SiteFailure(RuntimeError):
    """What the server learns about a failure at a site: its kind, not its details."""


def keep_details_local(message: Message, context: Context, call_next: Handler) -> Message:
    """Flower mod. Flower forwards an exception's text to the server, and a site's errors can
    name its files (a DataError lists bad paths): log them here, send only the error's type."""
    try:
        return call_next(message, context)
    except Exception as error:
        log(ERROR, "%s failed: %s", message.metadata.message_type, error)
        raise SiteFailure(f"{type(error).__name__} at the site (details in its log)") from None


def clip_when_asked(message: Message, context: Context, call_next: Handler) -> Message:
    """Flower mod for training rounds. Under differential privacy the server's strategy sends a
    clipping norm, and Flower's `fixedclipping_mod` bounds this site's update (weights and
    BatchNorm statistics together) to it before it leaves; without one the round is plain."""
    if KEY_CLIPPING_NORM in message.content[CONFIG_KEY]:
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)


def node_site(context: Context) -> SiteConfig:
    """Deployment and `flwr run`: the site comes from the node config (or the run config)."""
    return site_from_node_config(context.node_config, context.run_config)


def _prepare(
    message: Message,
    context: Context,
    resolve_site: SiteResolver,
    kind: type[Instructions] = RoundInstructions,
) -> tuple[SiteConfig, Instructions, SiteData]:
    """The site, the message's instructions (as `kind`) once the site's policy lets it answer
    them, and its data."""
    site = resolve_site(context)
    instructions = kind.from_config(message.content[CONFIG_KEY])
    check_request(context, site, instructions, message.metadata.message_type)
    data = load_site_data(site, instructions.class_names, instructions.image_size)
    return site, instructions, data


def _local_batchnorm(context: Context, instructions: RoundInstructions) -> State:
    """FedBN: the BatchNorm layers this clinic trained last (empty in its first round, and
    when the run does not use FedBN)."""
    kept = context.state.array_records.get(LOCAL_BATCHNORM_KEY)
    return from_record(kept) if instructions.local_batchnorm and kept is not None else {}


def with_local_batchnorm(state: State, context: Context, instructions: RoundInstructions) -> State:
    """The server's weights, with this clinic's own BatchNorm layers in place of the global ones
    where it has them (FedBN)."""
    local = _local_batchnorm(context, instructions)
    return {**state, **{name: array for name, array in local.items() if name in state}}


def keep_local_batchnorm(update: State, context: Context, instructions: RoundInstructions) -> None:
    if instructions.local_batchnorm:
        kept = _local_batchnorm(context, instructions)
        kept |= {name: update[name] for name in batchnorm_names(update)}
        context.state[LOCAL_BATCHNORM_KEY] = to_record(kept)


def _reply(message: Message, site: SiteConfig, metrics: Metrics, **records: Any) -> Message:
    """A reply in the protocol's shape: who answers and its typed metrics, then `records`."""
    content = {METRICS_KEY: metrics.to_record(), SITE_KEY: site_record(site.name), **records}
    return Message(RecordDict(content), reply_to=message)


def build_client_app(resolve_site: SiteResolver = node_site) -> ClientApp:
    """A ClientApp whose nodes find their site configuration with `resolve_site`."""
    app = ClientApp(mods=[keep_details_local])

    @app.train(mods=[clip_when_asked])
    def train(message: Message, context: Context) -> Message:
        site, instructions, data = _prepare(message, context, resolve_site)
        state = with_local_batchnorm(
            from_record(message.content[ARRAYS_KEY]), context, instructions
        )
        run_round = prewarm_round if instructions.phase == "prewarm" else finetune_round
        update, metrics = run_round(state, instructions, site, data)
        keep_local_batchnorm(update, context, instructions)
        log(
            INFO,
            "%s: %s round %d done on %d images in %.1f s (loss %.4f)",
            site.name,
            instructions.phase,
            instructions.server_round,
            metrics.num_examples,
            metrics.seconds,
            metrics.train_loss,
        )
        return _reply(message, site, metrics, **{ARRAYS_KEY: to_record(update)})

    @app.query(ROLL_CALL_ACTION)
    def roll_call(message: Message, context: Context) -> Message:
        """The site's name, which every reply carries anyway: rounds draw clinics by name."""
        site = resolve_site(context)
        return Message(RecordDict({SITE_KEY: site_record(site.name)}), reply_to=message)

    @app.query(STATISTICS_ACTION)
    def statistics(message: Message, context: Context) -> Message:
        site, instructions, data = _prepare(message, context, resolve_site)
        state = from_record(message.content[ARRAYS_KEY])
        arrays, metrics = statistics_round(state, instructions, site, data)
        return _reply(message, site, metrics, **{ARRAYS_KEY: to_record(arrays)})

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        site, instructions, data = _prepare(message, context, resolve_site)
        metrics, samples = evaluate_round(
            from_record(message.content[ARRAYS_KEY]),
            instructions,
            site,
            data,
            _local_batchnorm(context, instructions),
        )
        return _reply(message, site, metrics, **(samples.to_records() if samples else {}))

    @app.query(LOCAL_MODEL_ACTION)
    def local_model(message: Message, context: Context) -> Message:
        site, instructions, data = _prepare(message, context, resolve_site, LocalModelInstructions)
        weights, metrics = local_model_round(
            from_record(message.content[ARRAYS_KEY]), instructions, site, data
        )
        log(INFO, "%s: local model trained on %d images", site.name, metrics.num_examples)
        return _reply(message, site, metrics, **{ARRAYS_KEY: to_record(weights)})

    @app.query(EVALUATE_MODEL_ACTION)
    def evaluate_model(message: Message, context: Context) -> Message:
        """Test metrics of a model the coordinator sends: its instructions ask for no Grad-CAM
        and no personalisation, and nothing of the validation split leaves either."""
        site, instructions, data = _prepare(message, context, resolve_site, CrossSiteInstructions)
        metrics, _ = evaluate_round(
            from_record(message.content[ARRAYS_KEY]), instructions, site, data
        )
        unseen = {
            "val_score_histogram": [0] * len(metrics.val_score_histogram),
            "val_confusion_matrix": [0] * len(metrics.val_confusion_matrix),
        }
        scores = metrics.model_copy(update=unseen)
        return _reply(message, site, scores)

    return app


app = build_client_app()
