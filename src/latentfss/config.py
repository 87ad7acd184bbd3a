"""The configuration: each section's settings as a frozen dataclass holding its defaults, the
one place every default is written (`validate` fills a config's missing keys from them, and
the stages build their section's dataclass), and the check of a config against the JSON schema
(types, ranges, unknown keys). No torch import: the Snakefile loads this module at every call.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

from latentfss.errors import InputError

T = TypeVar("T")

DATASETS = ("synthetic", "pascal", "coco")
CLASS_SPLITS = ("consecutive", "interleaved")
ARCHS = ("resnet18", "resnet50", "resnet101")
RESIZE_MODES = ("none", "pfenet", "square")

# The top level: what to build, and the seeds
TOP_LEVEL = {
    "seed": 0,  # pipeline seed: random weights, K-Means, and pre-training if it runs
    # every row's models are trained once per seed (initialisation, episode and crop draws);
    # results are means over them (docs/method.md, "Training seeds and intervals")
    "train_seeds": [0],
    "folds": [0, 1, 2, 3],  # fold i tests classes 5i+1..5i+5 (PASCAL-5i numbering)
    "shots": [1, 5],  # K-shot settings to train and evaluate
    # the rows of the run: a name -> its overrides of SECTIONS' settings (docs/running.md,
    # "Rows"); `reference` names the row the others are compared with (default: the first)
    "runs": {"main": {}},
}


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset lives and which train list to use (section `dataset`)."""

    name: str = "synthetic"  # synthetic | pascal | coco
    root: str = "results/synthetic/voc"  # synthetic: where make_synthetic writes it; else the data
    # the train images: voc (VOC2012 train, 1,464) | voc_sbd (+ SBD, PFENet's 5,953) | trainaug
    # (10,582) | the path of a list file (one id, or PFENet's "image mask", per line); every
    # VOC2012 val image is dropped from it. Ignored for coco.
    train_list: str = "voc"

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"name must be one of {', '.join(DATASETS)}")
        if not self.train_list:
            raise ValueError("train_list must name a built list or a list file")


@dataclass(frozen=True)
class ProtocolConfig:
    """How classes split into folds and which images qualify as supports (section `protocol`)."""

    # consecutive (PASCAL-5i; COCO-20i as PANet) | interleaved (COCO as PFENet)
    class_split: str = "consecutive"
    # an image serves as a support for a class only where the class covers at least this many
    # pixels, and as a query only where one of the fold's classes does (a fold's train set: the
    # train images with such a base class). 2x32x32 = 2048 on real data (PFENet and the
    # authors); scaled here by image area (136x136 synthetic images against ~500x375 VOC: ~200)
    min_support_pixels: int = 200

    def __post_init__(self) -> None:
        if self.class_split not in CLASS_SPLITS:
            raise ValueError(f"class_split must be one of {', '.join(CLASS_SPLITS)}")


@dataclass(frozen=True)
class SyntheticConfig:
    """The generated benchmark (section `synthetic`); sizes in pixels."""

    seed: int = 0  # the dataset's own seed: changing the pipeline seed keeps the same data
    num_train: int = 800
    num_val: int = 200
    min_size: int = 112  # each image's height and width are drawn from min_size..max_size
    max_size: int = 160
    min_objects: int = 1  # objects per image, painted back to front (later ones occlude)
    max_objects: int = 4
    boundary: int = 1  # radius of the 255 band around objects (VOC style); 0 for none
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not 32 <= self.min_size <= self.max_size:
            raise ValueError("need 32 <= min_size <= max_size")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError("num_train and num_val must be positive")
        if self.boundary < 0 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("need boundary >= 0 and jpeg_quality in 1..100")


@dataclass(frozen=True)
class EncoderConfig:
    """Backbone and initial weights (section `encoder`)."""

    arch: str = "resnet18"  # resnet18 | resnet50 | resnet101 (the paper: resnet50, resnet101)
    # synthetic (shipped with latentfss: made once by the `pretrain` recipe, the synthetic
    # benchmark's ImageNet weights) | pretrain (rule pretrain_encoder makes it again, on this
    # machine) | none (seeded random init, BatchNorm calibrated) | imagenet (torchvision's, the
    # presets) | the path of a state dict
    weights: str = "synthetic"
    calibration_images: int = 512  # weights none: train images that set BatchNorm statistics

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}")


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe of the shipped `synthetic` encoder, which `encoder.weights: pretrain` runs
    again (section `pretrain`): a whole ResNet trained on generated images (their own seed
    streams, never a train or val image) labelled only by the factors they show (colours,
    patterns), not classes."""

    images: int = 2000  # corpus images, rendered once by the synthetic generator
    heldout: int = 2000  # images of another stream, scored at the end (accuracy per factor)
    steps: int = 6000  # SGD steps: linear warm-up over a tenth, then cosine to 0
    batch_size: int = 64
    crop: int = 48  # squares of the corpus images rescaled to this side
    scale: tuple[float, float] = (0.75, 2.0)  # the rescale range of a crop
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_share: float = 0.02  # a crop shows a factor where its objects cover this share of it
    # share of crops centred on an object pixel (as ImageNet photos centre theirs), the rest
    # anywhere
    object_crops: float = 0.5
    log_every: int = 25

    def __post_init__(self) -> None:
        if min(self.images, self.heldout, self.steps, self.batch_size, self.log_every) < 1:
            raise ValueError("images, heldout, steps, batch_size and log_every must be positive")
        if self.crop < 32 or not 0 < self.scale[0] <= self.scale[1] or len(self.scale) != 2:
            raise ValueError("need crop >= 32 and scale [low, high] with 0 < low <= high")
        if not 0 < self.min_share < 1 or not 0 <= self.object_crops <= 1:
            raise ValueError("need min_share in (0, 1) and object_crops in [0, 1]")


@dataclass(frozen=True)
class AnnotationConfig:
    """The offline annotation, section 3.3.1: features -> prototypes -> pseudo masks (section
    `annotation`)."""

    # train images are resized to this square before embedding (paper: 473); the synthetic
    # images are 112-160 px: 256 gives a 32x32 feature grid
    input_size: int = 256
    batch_size: int = 16
    # the workflow's: false, no features.zarr (610 GB at the COCO preset); pool_prototypes and
    # write_pseudo_masks compute the features again (the same bits)
    keep_features: bool = True

    def __post_init__(self) -> None:
        if self.input_size < 32 or self.batch_size < 1:
            raise ValueError("need input_size >= 32 and batch_size >= 1")


@dataclass(frozen=True)
class ClusterConfig:
    """K-Means settings (section `cluster`)."""

    k: int = 5  # sub-clusters (paper: 5 on PASCAL-5i, 15 on COCO-20i)
    niter: int = 30  # iterations
    nredo: int = 5  # restarts from different random seeds; the lowest inertia is kept

    def __post_init__(self) -> None:
        if self.k < 1 or self.niter < 1 or self.nredo < 1:
            raise ValueError("k, niter and nredo must be positive")


@dataclass(frozen=True)
class MiningConfig:
    """What the mining branch learns from besides the fold's train set (section `mining`, read
    by the workflow; paper Table 5)."""

    unlabeled: tuple[str, ...] = ()  # folders of extra unlabelled images to pseudo-label too
    remain: bool = False  # also mine the train images outside the fold's train set (Remain)


@dataclass(frozen=True)
class ModelConfig:
    """The network, sections 3.3.2 and 3.4 (section `model`); mine and bg_rectify are Table 3's
    switches."""

    sigma: float = 20.0  # cosine scale of Eq. 5 (paper: 20; the authors' baseline code: 10)
    mine: bool = True  # the mining branch on pseudo masks (L_pseudo in Eq. 1; Table 3 "Mine")
    bg_rectify: bool = True  # the global background prototype (Eq. 6-7; Table 3 "BG")
    bg_momentum: float = 0.999  # m in Eq. 6
    bg_fusion: float = 0.9  # w in Eq. 7
    head_channels: int = 256  # hidden width of the mining head (conv3x3-BN-ReLU x2, conv1x1)

    def __post_init__(self) -> None:
        if not (0 <= self.bg_momentum < 1 and 0 <= self.bg_fusion <= 1 and self.sigma > 0):
            raise ValueError("need 0 <= bg_momentum < 1, 0 <= bg_fusion <= 1 and sigma > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and batches, per fold and shot (section `train`): sized so that the
    synthetic default trains its 8 models in ~7 minutes on 2 CPU cores; the presets carry the
    paper's values."""

    iterations: int = 100  # paper: 6000
    batch_episodes: int = 4  # B support-query pairs per iteration (paper: 4)
    batch_pseudo: int = 8  # M extra images with pseudo masks per iteration (paper: 32)
    crop: int = 96  # square training crop (paper: 473)
    # random rescale before the crop (ours; the paper names crop and flip only)
    scale: tuple[float, float] = (0.75, 1.5)
    lr: float = 1e-3  # SGD, x0.1 at 1/3 and 2/3 of the iterations
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lambda_pseudo: float = 1.0  # lambda in Eq. 1
    ema_decay: float = 0.99  # EMA of the weights = the evaluated model (paper-length: 0.999)
    log_every: int = 10  # train.csv rows: mean losses over each window
    checkpoint_every: int = 50  # resumable state (train_state.pt) every this many steps
    workers: int = 1  # data-loader processes
    # >1: the step's images go through the encoder in this many parts, each recomputed in the
    # backward pass: less memory, one more encoder forward, the same step (docs/method.md)
    micro_batches: int = 1

    def __post_init__(self) -> None:
        positive = (
            self.iterations,
            self.batch_episodes,
            self.crop,
            self.log_every,
            self.checkpoint_every,
            self.micro_batches,
        )
        if min(positive) < 1 or self.batch_pseudo < 0 or self.workers < 0:
            raise ValueError("iterations, batches, crop, intervals, micro_batches must be positive")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError("scale must be [low, high] with 0 < low <= high")


@dataclass(frozen=True)
class EvaluateConfig:
    """The test protocol, section 4.1, and the rectified inference, section 3.4 (section
    `evaluate`)."""

    episodes: int = 100  # test episodes per seed (paper: 1000 PASCAL, 4000 COCO)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # one episode list per seed; results: their mean
    # what the network sees of queries and supports (and the bank of train images): none
    # (original size, as the authors' test) | pfenet (long side to input_size, aspect kept,
    # zero-padded) | square (input_size square); predictions are scored at each query label's
    # original size in every mode
    resize: str = "none"
    input_size: int = 128  # pfenet and square: the side of the network's input
    batch_size: int = 16  # images loaded and encoded together
    # each distinct image is encoded once per job: the features of query images that are
    # supports too are kept this far (device memory), the rest encoded a second time
    cache_mb: int = 2048
    fg_rectify: bool = True  # Eq. 8-9 with the region bank (paper Table 3, "FG")
    top_n: int = 4  # N relevant train images
    beta: float = 0.2  # rectification weight
    workers: int = 1  # data-loader processes

    def __post_init__(self) -> None:
        if min(self.episodes, self.input_size, self.batch_size, self.top_n) < 1 or not self.seeds:
            raise ValueError("episodes, input_size, batch_size, top_n and seeds must be positive")
        if self.cache_mb < 0:
            raise ValueError("cache_mb must be at least 0")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}")


SECTIONS = {
    "dataset": DatasetConfig,
    "protocol": ProtocolConfig,
    "synthetic": SyntheticConfig,
    "encoder": EncoderConfig,
    "pretrain": PretrainConfig,
    "annotation": AnnotationConfig,
    "cluster": ClusterConfig,
    "mining": MiningConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
}


def defaults() -> dict:
    """Every key's default, as a config holds it (lists, not tuples)."""
    sections = {name: dataclasses.asdict(cls()) for name, cls in SECTIONS.items()}
    return json.loads(json.dumps({**TOP_LEVEL, **sections}))


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing or malformed file is an InputError naming it."""
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise InputError(f"{path}: not valid YAML{line}") from None


def _fill_defaults(config: dict) -> None:
    """Insert each missing key's default (`defaults()`): whole keys at the top level, and each
    missing key of a section given in part."""
    for key, value in defaults().items():
        if key not in config:
            config[key] = value
        elif key in SECTIONS and isinstance(config[key], dict):
            config[key] = {**value, **config[key]}


def _scalar(text: str, kind: str | None) -> Any:
    """`text` as the schema's scalar type `kind` when it reads as one, else `text` itself."""
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower(), text)
    for convert in {"integer": (int,), "number": (int, float)}.get(kind, ()):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _typed(value: Any, schema: dict) -> Any:
    """`value` with every string where the schema wants a number or a boolean converted:
    Snakemake's `--config 'train={iterations: 5}'` parses nested values as strings."""
    if isinstance(value, str):
        return _scalar(value, schema.get("type"))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_typed(item, schema["items"]) for item in value]
    if isinstance(value, dict):
        properties, others = schema.get("properties", {}), schema.get("additionalProperties")
        rest = others if isinstance(others, dict) else {}  # e.g. each row of `runs`
        return {key: _typed(v, properties.get(key, rest)) for key, v in value.items()}
    return value


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        known = ", ".join(sorted(error.schema.get("properties", {})))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"{key}." if error.absolute_path else ""
        return f"unknown key '{where}{unknown[0]}' (known here: {known})"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not one of {error.validator_value}"
    if error.validator == "type":
        return f"{key}: {error.instance!r} is not of type {error.validator_value}"
    return f"{key}: {error.message}"


def validate(config: dict, schema_path: str | Path, source: str = "config") -> dict:
    """Fill in `config`'s defaults and check it against the JSON schema, in place; a string
    where the schema wants a number or a boolean is converted first (`--config` gives strings).

    Raises InputError with one line naming the offending key, e.g.
    "config: unknown key 'dataset.nme' (known here: name, root, train_list)".
    """
    schema = read_yaml(schema_path)
    if not isinstance(config, dict):
        raise InputError(f"{source}: expected a mapping of sections, got {type(config).__name__}")
    config.update(_typed(config, schema))
    _fill_defaults(config)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        raise InputError(f"{source}: {_describe(jsonschema.exceptions.best_match(errors))}")
    for name, cls in SECTIONS.items():
        config[name] = _as_fields(config[name], cls)
    for overrides in config["runs"].values():
        overrides.update({name: _as_fields(v, SECTIONS[name]) for name, v in overrides.items()})
    return config


def _as_fields(values: dict, cls: type) -> dict:
    """A section's numbers as its dataclass's fields type them: an integer where a float is
    wanted becomes one (`sigma: 20` reads as 20.0), so that equal settings read alike."""
    hints = typing.get_type_hints(cls)

    def number(value: Any, hint: Any) -> Any:
        wants_float = hint is float and not isinstance(value, bool)
        return float(value) if wants_float and isinstance(value, int) else value

    return {
        key: [number(v, typing.get_args(hints[key])[0]) for v in value]
        if isinstance(value, list) and typing.get_origin(hints[key]) is tuple
        else number(value, hints[key])
        for key, value in values.items()
    }


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def from_params(cls: type[T], params: dict | str | None, section: str) -> T:
    """Build a stage's frozen dataclass from its config section (a dict or a JSON string).

    Unknown keys, wrongly typed values and values the dataclass rejects (ValueError in its
    __post_init__) are InputErrors naming the section; keys left out keep their default.
    """
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else {}
        except json.JSONDecodeError as e:
            raise InputError(f"--params for '{section}' is not valid JSON ({e.msg})") from None
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise InputError(f"unknown key '{section}.{key}' (known here: {known})")
        if not _matches(value, hints[key]):
            expected = getattr(hints[key], "__name__", hints[key])
            raise InputError(f"{section}.{key}: {value!r} is not of type {expected}")
        if isinstance(value, list):
            params[key] = tuple(value)
    missing = [n for n, f in fields.items() if n not in params and _no_default(f)]
    if missing:
        raise InputError(f"{section}: missing key(s) {', '.join(missing)}")
    try:
        return cls(**params)
    except ValueError as e:  # the dataclass's own checks of values and their combinations
        raise InputError(f"{section}: {e}") from None


def from_arguments(cls: type[T], args: Any) -> T:
    """A stage's typed job (TrainJob and the like) from its command line's namespace: the
    fields it names."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in vars(args).items() if name in names})


def _no_default(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
