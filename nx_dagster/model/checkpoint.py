"""Load a GPT-2-architecture checkpoint in Hugging Face layout from a folder, an fsspec URL or a Hub id.

A checkpoint is three files: `config.json`, `model.safetensors`, `tokenizer.json`. Everything that can
be wrong with them is reported as an `NxInputError` before any table is touched.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nx_dagster.errors import NxInputError
from nx_dagster.hashing import cache_root, sha256_files
from nx_dagster.model.config import read_config
from nx_dagster.model.gpt2 import GPT2, Block, GPT2Config
from nx_dagster.model.token_strings import TokenStrings

log = logging.getLogger(__name__)

FILES = ("config.json", "model.safetensors", "tokenizer.json")
BUNDLED = "bundled"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled" / "model"
BUNDLED_NAME = "nx-tiny-gpt2"


@dataclass
class Checkpoint:
    name: str
    source: str
    folder: Path
    config: GPT2Config
    sha256: str  # of model.safetensors
    files_sha256: dict[str, str]
    _strings: TokenStrings | None = field(default=None, repr=False)

    @property
    def data_version(self) -> str:
        """Changes whenever any of the three files changes: marks everything downstream stale."""
        return hashlib.sha256("".join(self.files_sha256[f] for f in FILES).encode()).hexdigest()[:16]

    def load_model(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GPT2:
        return load_weights(self.folder / "model.safetensors", self.config).to(device=device, dtype=dtype)

    def load_tokenizer(self):
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise NxInputError(
                f"tokenizer {self.folder / 'tokenizer.json'}", f"cannot be read ({e})",
                "provide a Hugging Face `tokenizers` tokenizer.json saved with the checkpoint",
            ) from e

    def token_strings(self) -> TokenStrings:
        """The one token-id -> string decoder for every table (model/token_strings.py), built once."""
        if self._strings is None:
            self._strings = TokenStrings(self.load_tokenizer(), f"tokenizer {self.folder / 'tokenizer.json'}")
        return self._strings


def _file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of each checkpoint file (big ones remembered between runs: `nx_dagster.hashing`)."""
    return dict(zip(FILES, sha256_files([folder / name for name in FILES])))


def resolve(source: str | None) -> tuple[str, Path]:
    """Map NX_MODEL's value to (display name, local folder), fetching remote files into a cache."""
    source = (source or "").strip() or BUNDLED
    if source == BUNDLED:
        return BUNDLED_NAME, BUNDLED_DIR
    if "://" in source:
        return source.rstrip("/").rsplit("/", 1)[-1], _fetch_fsspec(source)
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")):
        if not path.is_dir():
            raise NxInputError(
                f"model {source!r}", "is not a folder", "point NX_MODEL at a folder holding " + ", ".join(FILES)
            )
        return path.resolve().name, path.resolve()
    return source, _fetch_hub(source)


def _cache_dir(key: str) -> Path:
    return cache_root() / "checkpoints" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _fetch_fsspec(url: str) -> Path:
    import fsspec

    dest = _cache_dir(url)
    dest.mkdir(parents=True, exist_ok=True)
    fs, root = fsspec.core.url_to_fs(url)
    for name in FILES:
        target = dest / name
        remote = f"{root.rstrip('/')}/{name}"
        try:
            size = fs.info(remote)["size"]
        except FileNotFoundError:
            raise NxInputError(f"model {url!r}", f"has no {name}", "upload " + ", ".join(FILES)) from None
        if target.exists() and target.stat().st_size == size:
            continue
        tmp = target.with_suffix(".part")
        fs.get(remote, str(tmp))
        tmp.replace(target)
    return dest


def _fetch_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise NxInputError(
            f"model {repo_id!r}", "is neither a local folder nor a URL, and huggingface_hub is not installed",
            "pip install huggingface_hub, or download the checkpoint and set NX_MODEL to its folder",
        ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(FILES)))
    except Exception as e:
        raise NxInputError(
            f"model {repo_id!r}", f"could not be downloaded from the Hugging Face Hub ({type(e).__name__})",
            "check the id and the network, or download it elsewhere and set NX_MODEL to the local folder",
        ) from e


def open_checkpoint(source: str | None = None) -> Checkpoint:
    """Resolve and validate a checkpoint without loading its weights into a model."""
    name, folder = resolve(source)
    label = repr(source or BUNDLED)
    for f in FILES:
        if not (folder / f).exists():
            raise NxInputError(f"model {label}", f"has no {f} in {folder}", "a checkpoint needs " + ", ".join(FILES))
    config = read_config(folder, label)
    hashes = _file_hashes(folder)
    ckpt = Checkpoint(name, source or BUNDLED, folder, config, hashes["model.safetensors"], hashes)
    check_weights(folder / "model.safetensors", config)
    vocab = len(ckpt.token_strings())  # builds the decoder now: a tokenizer it refuses stops the run here
    if vocab > config.vocab_size:
        raise NxInputError(
            f"tokenizer {folder / 'tokenizer.json'}",
            f"has {vocab} tokens but the model's vocab_size is {config.vocab_size}",
            "use the tokenizer saved with this checkpoint",
        )
    return ckpt


def expected_shapes(cfg: GPT2Config) -> dict[str, tuple[int, ...]]:
    d, n = cfg.n_embd, cfg.n_inner
    shapes = {"wte.weight": (cfg.vocab_size, d), "wpe.weight": (cfg.n_positions, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "mlp.c_fc.weight": (d, n), p + "mlp.c_fc.bias": (n,),
            p + "mlp.c_proj.weight": (n, d), p + "mlp.c_proj.bias": (d,),
        })
    return shapes


def check_weights(path: Path, cfg: GPT2Config) -> None:
    """Read only the safetensors header: every tensor present, with the shape config.json implies,
    and the file long enough to hold them. Cheap even for GPT-2 XL."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {_strip(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise NxInputError(f"weights {path}", f"cannot be read ({e})", "re-download or re-save model.safetensors") from e
    for key, shape in expected_shapes(cfg).items():
        if key not in shapes:
            raise NxInputError(f"weights {path}", f"lack the tensor {key!r}", "use a complete GPT-2 checkpoint")
        if shapes[key] != shape:
            raise NxInputError(f"weights {path}", f"{key} has shape {shapes[key]}, config.json implies {shape}",
                               "use the config.json saved with these weights")


def _strip(key: str) -> str:
    return key[len("transformer."):] if key.startswith("transformer.") else key


def load_weights(path: Path, cfg: GPT2Config) -> GPT2:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise NxInputError(f"weights {path}", f"cannot be read ({e})", "re-download or re-save model.safetensors") from e
    sd = {_strip(k): v.float() for k, v in raw.items()}
    shapes = expected_shapes(cfg)  # the one shape table, shared with check_weights
    for key, shape in shapes.items():
        if key not in sd:
            raise NxInputError(f"weights {path}", f"lack the tensor {key!r}", "use a complete GPT-2 checkpoint")
        if tuple(sd[key].shape) != shape:
            raise NxInputError(f"weights {path}", f"{key} has shape {tuple(sd[key].shape)}, config.json implies "
                               f"{shape}", "use the config.json saved with these weights")

    def get(key: str) -> torch.Tensor:
        return sd[key]

    blocks = []
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        blocks.append(Block(
            ln_1_w=get(p + "ln_1.weight"), ln_1_b=get(p + "ln_1.bias"),
            attn_w=get(p + "attn.c_attn.weight").t().contiguous(),
            attn_b=get(p + "attn.c_attn.bias"),
            attn_proj_w=get(p + "attn.c_proj.weight").t().contiguous(),
            attn_proj_b=get(p + "attn.c_proj.bias"),
            ln_2_w=get(p + "ln_2.weight"), ln_2_b=get(p + "ln_2.bias"),
            fc_w=get(p + "mlp.c_fc.weight").t().contiguous(), fc_b=get(p + "mlp.c_fc.bias"),
            proj_w=get(p + "mlp.c_proj.weight").t().contiguous(), proj_b=get(p + "mlp.c_proj.bias"),
        ))
    return GPT2(
        cfg, get("wte.weight"), get("wpe.weight"), blocks,
        get("ln_f.weight"), get("ln_f.bias"),
    )


def raw_weights(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors in Hugging Face orientation (Conv1D [in, out]), prefix stripped."""
    from safetensors.torch import load_file

    return {_strip(k): v.float() for k, v in load_file(str(ckpt.folder / "model.safetensors")).items()}
