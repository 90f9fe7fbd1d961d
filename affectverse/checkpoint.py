"""A model folder: what it holds, its weights checked before use, loaded verified, and its identity.

One place for every command and train.py:

- :func:`resolve`: a folder, or a Hub id's snapshot (downloaded, or read from the cache offline).
- :func:`inspect`: offline, before anything loads: a folder that is not a model is named as what it is (a Trainer
  checkpoint, a LoRA adapter, a train.py run without its merged model), a ``model_type`` the caller cannot use is
  refused, and the weight files must be whole safetensors (headers and sizes agree, every shard of the index there;
  pickles refused).
- :func:`load_verified`: the config's model built on the meta device (nothing allocated) and compared with the
  safetensors headers (transformers' own key renames applied): a missing, unexpected or differently shaped tensor
  stops the load, naming it, before a byte of weights is read. Allowed: the ignored keys the class declares
  (``_keys_to_ignore_on_load_unexpected``: a full Qwen2.5-Omni's talker and token2wav), tied weights, and what the
  caller names as new (the EWM when train.py starts from a Qwen2.5-Omni base). After ``from_pretrained`` its own
  loading report is checked the same way, and every weight must be finite.
- :func:`model_identity`: sha256 over every tensor (name, dtype, shape, bytes) and the config (without metadata such
  as ``auto_map``): computed once when a model is saved (:func:`identity_record`, kept in the folder's record
  ``.affectverse.json`` with each file's size and mtime), else hashed once and cached by path, size and mtime.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

from affectverse import ownership
from configuration_affectverse import AffectVerseConfig
from modeling_affectverse import AffectVerseForConditionalGeneration

logger = logging.getLogger(__name__)

AFFECTVERSE_TYPES = ("affectverse",)
BASE_TYPES = ("qwen2_5_omni", "qwen2_5_omni_thinker")  # train.py starts from these; the EWM is then new
WEIGHTS, WEIGHT_INDEX = "model.safetensors", "model.safetensors.index.json"
# What from_pretrained of the model and of the processor reads, the remote code and the model card: a Hub-ready
# folder is these files and nothing else (push uploads only them; snapshots download only them).
MODEL_FILES = ("config.json", "generation_config.json", WEIGHTS, "model-*-of-*.safetensors", WEIGHT_INDEX)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
CODE_FILES = ("*_affectverse.py",)
CARD_FILES = ("README.md",)
HUB_FILES = MODEL_FILES + PROCESSOR_FILES + CODE_FILES + CARD_FILES
# config keys that describe how a model was saved or loaded, not what it computes (the tensors carry their dtype)
METADATA_KEYS = ("auto_map", "transformers_version", "custom_pipelines", "_name_or_path", "_commit_hash", "dtype",
                 "torch_dtype")
IDENTITY_VERSION = 1
SHOWN = 5  # tensor names listed in an error


class CheckpointError(ValueError):
    """A model folder that cannot be used as asked, named with what it is and what to do."""


def register_local_classes():
    """Let transformers' Auto classes resolve ``model_type: affectverse`` to this project's config class: a
    tokenizer or processor load from an AffectVerse folder then neither runs the folder's code, nor asks whether
    to, nor warns "You are using a model of type `affectverse` to instantiate a model of type ``"."""
    AutoConfig.register(AffectVerseConfig.model_type, AffectVerseConfig, exist_ok=True)


def _listed(names, limit: int = SHOWN) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ================================================================================================ the folder
def resolve(name, option: str = "MODEL") -> Path:
    """The local folder of ``name``: itself, or the snapshot of a Hub model id (what loading needs; the cache only
    when offline)."""
    if Path(name).is_dir():
        return Path(name)
    if Path(name).exists():
        raise CheckpointError(f"{option} {name}: a file, not a model folder")
    try:
        return Path(snapshot_download(str(name), allow_patterns=list(HUB_FILES)))
    except HFValidationError:
        raise CheckpointError(f"{option} {name}: no such folder (and not a Hub model id)") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{option} {name}: no such folder, and not in the local Hub cache (offline); "
                              "download it first or give a folder") from None
    except Exception as err:  # noqa: BLE001 - not found, no access, no network: one line naming the model
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{option} {name}: no such folder, and the Hub did not give it ({first})") from None


def inspect(path, option: str = "MODEL", allowed=AFFECTVERSE_TYPES) -> dict:
    """The config dict of the model folder ``path``, or :class:`CheckpointError` saying what the folder is instead;
    reads only file names, config.json and safetensors headers."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{option} {path}: no such folder")
    names = {p.name for p in folder.iterdir()}
    if "config.json" not in names:
        if "trainer_state.json" in names or fnmatch.filter(names, "optimizer*") or fnmatch.filter(names, "rng_state*"):
            raise CheckpointError(
                f"{option} {path} is a Trainer checkpoint (trainer_state.json, optimizer and RNG states): training "
                f"state, not a model. Use the run's merged model ({folder.parent}), or resume training from it with "
                "--resume_from_checkpoint")
        if "adapter_config.json" in names:
            raise CheckpointError(
                f"{option} {path} is a LoRA adapter (adapter_config.json: LoRA + EWM weights only), not a model. "
                f"Use the merged model beside it ({folder.parent}), or apply it to its base with "
                "peft.AutoPeftModelForCausalLM.from_pretrained")
        if (folder / "adapter").is_dir():
            raise CheckpointError(f"{option} {path} holds no config.json: a train.py run without --export_merged "
                                  "(its adapter/ holds only LoRA + EWM); export the merged model first")
        raise CheckpointError(f"{option} {path}: no config.json in this folder (not a model checkpoint)")
    try:
        config, _ = PreTrainedConfig.get_config_dict(str(folder))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{option} {path}: config.json does not read ({err})") from None
    model_type = config.get("model_type")
    if model_type not in allowed:
        if model_type in BASE_TYPES:
            raise CheckpointError(f"{option} {path} is a Qwen2.5-Omni base checkpoint ({model_type!r}) without an "
                                  "Emotion World Module: fine-tune it with train.py first and use its output")
        raise CheckpointError(f"{option} {path!r} is a {model_type!r} checkpoint; expected config model_type one "
                              f"of {tuple(allowed)}")
    check_weight_files(folder, option)
    return config


def weight_files(folder) -> list[Path]:
    """The safetensors files of the model in ``folder``: the shards its index names, else ``model.safetensors``."""
    folder = Path(folder)
    index = folder / WEIGHT_INDEX
    if index.is_file():
        try:
            named = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{index}: unreadable shard index ({err})") from None
        return [folder / name for name in named]
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    return sorted(folder.glob("*.safetensors"))


def check_weight_files(folder: Path, option: str = "MODEL"):
    """Safetensors weights whose header and size agree, every shard an index names present; pickle weights refused.
    Reads only headers, so a truncated or missing file is named before anything loads."""
    files = weight_files(folder)
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise CheckpointError(f"{folder / WEIGHT_INDEX} names shards that are missing: {', '.join(missing)}")
    if not files:
        pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(pattern))
        detail = (f"it holds only pickle weights ({', '.join(pickles)}), which are refused: loading them can run code; "
                  "convert them to safetensors") if pickles else "it holds no *.safetensors weights"
        raise CheckpointError(f"{option} {folder}: {detail}")
    for path in files:
        problem = safetensors_problem(path)
        if problem:
            raise CheckpointError(f"{path}: {problem}; nothing was loaded: copy, download or save it again")


def _parse_header(path) -> tuple[dict, int]:
    """(header without ``__metadata__``, data offset) of a safetensors file; ValueError saying what is wrong."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            raise ValueError(f"truncated or not a safetensors file ({size} bytes; the header length field says {n})")
        try:
            header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            for value in header.values():
                begin, end = (int(x) for x in value["data_offsets"])
                if not (0 <= begin <= end) or not isinstance(value["shape"], list):
                    raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError("not a safetensors file (unreadable header)") from None
    return header, 8 + n


def read_header(path) -> tuple[dict, int]:
    """(safetensors header without ``__metadata__``, offset of the data) of ``path``."""
    try:
        return _parse_header(path)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


def safetensors_problem(path) -> str | None:
    """Why a ``.safetensors`` file cannot load (cut short, not safetensors), from its header alone; None if fine."""
    try:
        header, start = _parse_header(path)
    except ValueError as err:
        return str(err)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    size = os.path.getsize(path)
    if start + end > size:
        return f"truncated: {size} bytes, its header describes {start + end}"
    return None


def checkpoint_tensors(folder) -> dict[str, tuple[list[int], str]]:
    """``{checkpoint key: (shape, file name)}`` of the model's weight files, from their headers."""
    found = {}
    for path in weight_files(folder):
        header, _ = read_header(path)
        found.update({key: (list(value["shape"]), path.name) for key, value in header.items()})
    return found


# =========================================================================================== verified loading
def _meta_model(config, trust_remote_code: bool):
    """The model ``config`` describes, on the meta device: every parameter's name and shape, no memory."""
    with torch.device("meta"):
        if trust_remote_code:
            return AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        return AffectVerseForConditionalGeneration(config)


def _matches(key: str, patterns) -> bool:
    return any(re.search(p, key) for p in patterns or ())


def compare_with_headers(folder, config, trust_remote_code: bool = False, new=()) -> None:
    """Raise :class:`CheckpointError` when the weights of ``folder`` do not fit the model ``config`` describes:
    tensors missing (beyond ``new`` prefixes, tied and ignored ones), unexpected, or of other shapes."""
    meta = _meta_model(config, trust_remote_code)
    expected = {key: list(value.shape) for key, value in meta.state_dict().items()}
    transforms = get_model_conversion_mapping(meta)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    stored = checkpoint_tensors(folder)
    renamed, converted = {}, set()
    for key, value in stored.items():
        target, pattern = rename_source_key(key, renamings, converters, meta.base_model_prefix, expected)
        if target not in expected and key in expected:  # as transformers' loader: a key already in place
            target, pattern = key, None
        renamed[target] = (key, *value)
        if pattern is not None:
            converted.add(target)
    tied = set(getattr(meta, "all_tied_weights_keys", {}) or {})
    missing = [k for k in expected if k not in renamed and k not in tied and not k.startswith(tuple(new))
               and not _matches(k, meta._keys_to_ignore_on_load_missing)]
    unexpected = [key for target, (key, _, _) in renamed.items()
                  if target not in expected and not _matches(target, meta._keys_to_ignore_on_load_unexpected)]
    mismatched = [f"{target}: {shape} in {file}, {expected[target]} in config.json"
                  for target, (_, shape, file) in renamed.items()
                  if target in expected and target not in converted and shape != expected[target]]
    where = folder / (WEIGHT_INDEX if (folder / WEIGHT_INDEX).is_file() else WEIGHTS)
    if mismatched:
        raise CheckpointError(f"{folder}: config.json and the weights disagree on {len(mismatched)} tensor shapes "
                              f"({_listed(mismatched, 3)}); nothing was loaded: the config.json belongs to another "
                              "model, put the one saved with these weights beside them")
    if missing:
        what = "all" if len(missing) == len(expected) else str(len(missing))
        raise CheckpointError(f"{where}: the weights lack {what} of the {len(expected)} tensors the model needs "
                              f"({_listed(missing)}); they would be random: the checkpoint is incomplete (an "
                              "interrupted save or copy?): save or export it again")
    if unexpected:
        raise CheckpointError(f"{where}: the weights hold {len(unexpected)} tensor(s) the model does not have "
                              f"({_listed(unexpected)}); they belong to another model or configuration: put the "
                              "config.json saved with them beside them")


def load_verified(path, dtype=None, device=None, trust_remote_code: bool = False, option: str = "MODEL",
                  allowed=AFFECTVERSE_TYPES, overrides: dict | None = None, **load_kwargs):
    """The model of the folder ``path``, loaded only if it is what it should be (see the module docstring), on
    ``device`` (None: where from_pretrained puts it), in eval mode. ``allowed``: the config ``model_type`` values
    the caller takes; from a Qwen2.5-Omni base (``BASE_TYPES``) the EWM is new and may be absent from the weights.
    ``overrides`` change config fields (EWM settings); ``load_kwargs`` go to ``from_pretrained``."""
    folder = Path(path)
    new = ("ewm.",) if inspect(folder, option, allowed).get("model_type") in BASE_TYPES else ()
    register_local_classes()
    overrides = dict(overrides or {})
    try:
        if trust_remote_code:
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True, **overrides)
        else:
            config = AffectVerseConfig.from_pretrained(str(folder), **overrides)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{option} {path}: config.json does not describe a model ({err})") from None
    compare_with_headers(folder, config, trust_remote_code, new)
    if dtype is not None:
        load_kwargs["dtype"] = dtype
    model_class = AutoModelForCausalLM if trust_remote_code else AffectVerseForConditionalGeneration
    try:
        model, info = model_class.from_pretrained(str(folder), config=config, trust_remote_code=trust_remote_code,
                                                  output_loading_info=True, **load_kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{option} {path}: the model does not load ({type(err).__name__}: {first})") from None
    missing = [k for k in info["missing_keys"] if not k.startswith(new)]
    problems = [f"{len(v)} {name} ({_listed(sorted(v))})" for name, v in (
        ("missing", missing), ("unexpected", info["unexpected_keys"]), ("mismatched", info["mismatched_keys"]),
        ("errors", info["error_msgs"])) if v]
    if problems:
        raise CheckpointError(f"{option} {path}: transformers' load report: {'; '.join(problems)}")
    if device is not None:
        model = model.to(device)
    check_finite(model, folder)
    return model.eval()


def check_finite(model, folder=None):
    """Raise :class:`CheckpointError` naming the parameters that hold NaN or infinite values."""
    named = [(name, p) for name, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        return
    finite = torch.stack([torch.isfinite(p).all() for _, p in named]).cpu()  # one transfer for all
    bad = [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
    if bad:
        raise CheckpointError(f"{folder or 'the model'}: NaN or infinite values in {len(bad)} of {len(named)} weight "
                              f"tensors ({_listed(bad)}); every answer would be garbage: the checkpoint is broken (a "
                              "diverged training run or a damaged file): use an earlier checkpoint")


# ================================================================================================= identity
def _config_digest(path: Path) -> str:
    config = json.loads(path.read_text(encoding="utf-8"))

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in METADATA_KEYS}
        return value

    return hashlib.sha256(json.dumps(strip(config), sort_keys=True).encode()).hexdigest()


def tensor_digests(path) -> dict[str, str]:
    """``{tensor name: "dtype shape sha256"}`` of a safetensors file, reading every byte once."""
    header, start = read_header(path)
    digests = {}
    with open(path, "rb") as fh:
        for name, value in sorted(header.items(), key=lambda kv: int(kv[1]["data_offsets"][0])):
            begin, end = (int(x) for x in value["data_offsets"])
            fh.seek(start + begin)
            digest, left = hashlib.sha256(), end - begin
            while left > 0:
                chunk = fh.read(min(left, 1 << 24))
                if not chunk:
                    raise CheckpointError(f"{path}: truncated inside tensor {name}")
                digest.update(chunk)
                left -= len(chunk)
            digests[name] = f"{value['dtype']} {value['shape']} {digest.hexdigest()}"
    return digests


def _identity_files(folder: Path) -> list[Path]:
    return [folder / "config.json", *weight_files(folder)]


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def cache_dir() -> Path:
    """Where hashes are cached: ``$AFFECTVERSE_CACHE``, else ``$XDG_CACHE_HOME/affectverse`` (``~/.cache``)."""
    if os.environ.get("AFFECTVERSE_CACHE"):
        return Path(os.environ["AFFECTVERSE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "affectverse"


def _digests(paths: list[Path]) -> dict[str, dict]:
    """``{file name: digests}`` of ``paths``, from the cache (keyed by real path, size and mtime) or hashed."""
    cache_path = cache_dir() / "identity-cache.json"
    try:
        cache = json.loads(cache_path.read_text())
        cache = cache if cache.get("version") == IDENTITY_VERSION else {}
    except (OSError, ValueError, AttributeError):
        cache = {}
    entries = cache.get("files", {})
    keys = {path: os.path.realpath(path) for path in paths}
    todo = [p for p in paths if (entries.get(keys[p]) or {}).get("stamp") != _stamp(p)]
    if todo:
        logger.info("hashing %d model file(s) once for the model's identity (cached in %s)", len(todo), cache_path)

        def digest(path):
            return _config_digest(path) if path.name == "config.json" else tensor_digests(path)

        with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:  # hashlib releases the GIL
            for path, value in zip(todo, pool.map(digest, todo)):
                entries[keys[path]] = {"stamp": _stamp(path), "digest": value}
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            ownership.atomic_write(cache_path, json.dumps({"version": IDENTITY_VERSION, "files": entries}))
        except OSError as err:  # a read-only home: hash again next time
            logger.warning("identity cache %s not written (%s)", cache_path, err)
    return {path.name: entries[keys[path]]["digest"] for path in paths}


def _combine(digests: dict[str, dict]) -> str:
    tensors = {}
    for name, value in digests.items():
        if name != "config.json":
            tensors.update(value)
    return hashlib.sha256(json.dumps({"version": IDENTITY_VERSION, "config": digests["config.json"],
                                      "tensors": tensors}, sort_keys=True).encode()).hexdigest()


def identity_record(folder) -> dict:
    """What a save stores in the folder's record: the identity and the size and mtime of each file it covers."""
    folder = Path(folder)
    paths = _identity_files(folder)
    return {"sha256": _combine(_digests(paths)), "version": IDENTITY_VERSION,
            "files": {p.name: _stamp(p) for p in paths}}


def model_identity(path) -> str:
    """The identity of the model folder ``path``: the one stored when it was saved, while every file it covers is
    unchanged (size and mtime), else the hash of its content (cached)."""
    folder = Path(path)
    try:
        stored = (ownership.read_record(folder) or {}).get("identity")
    except ownership.OwnershipError:
        stored = None
    paths = _identity_files(folder)
    if (stored and stored.get("version") == IDENTITY_VERSION and
            stored.get("files") == {p.name: _stamp(p) for p in paths if p.exists()}):
        return stored["sha256"]
    return _combine(_digests(paths))
