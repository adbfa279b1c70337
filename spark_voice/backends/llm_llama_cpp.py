"""LLM in-process on llama-cpp-python (`llama_cpp.Llama`): gpt-oss-20b on a Spark, SmolLM2 on CPU.

Settings map 1:1 to engine parameters:

============================  ==========================================================
LLM_MODEL / LLM_MODEL_DIR     ``model_path`` (a local GGUF; never downloaded)
LLM_CTX_SIZE                  ``n_ctx``
LLM_THREADS                   ``n_threads`` and ``n_threads_batch``
LLM_N_GPU_LAYERS              ``n_gpu_layers`` (-1 = all; BACKEND=cpu forces 0)
LLM_FLASH_ATTN                ``flash_attn`` (auto = on iff layers are offloaded to a GPU)
LLM_SEED                      ``seed`` (-1 = random)
LLM_TEMPERATURE, LLM_TOP_P    sampling ``temp`` / ``top_p``
LLM_MAX_TOKENS                default answer budget (reserved in the context)
LLM_REASONING_EFFORT          gpt-oss only: ``reasoning_effort`` passed to the chat template
============================  ==========================================================

The prompt is rendered with the GGUF's own chat template (``tokenizer.chat_template``, through
llama-cpp-python's Jinja2ChatFormatter, so template kwargs such as ``reasoning_effort`` reach it),
tokenized with special tokens, and generated token by token with ``Llama.generate``; pieces are
detokenized incrementally (UTF-8 safe). For gpt-oss (detected from GGUF metadata) the text is
parsed by :class:`spark_voice.harmony.HarmonyParser` and yielded per channel; only ``final`` is
meant to be spoken. Generation stops at an end-of-generation token (llama.cpp's EOG set: for
gpt-oss ``<|return|>``/``<|call|>``, not ``<|end|>``), for other models also at any control token
(e.g. ChatML ``<|im_start|>``) or a turn-delimiter string, at ``max_tokens``, or when ``cancel``
is set (checked between tokens).

History that does not fit into ``n_ctx - max_tokens`` is trimmed oldest exchange first (the
system message and the last user message are always kept); if even that does not fit,
:class:`~spark_voice.errors.ContextOverflow` says how many tokens were needed.

One ``Llama`` runs one generation at a time: concurrent ``stream_chat`` calls queue on a lock
that health checks (``info()``, ``warnings()``) never take.

Length: prompt rendering, context fitting and token streaming share the one `Llama` object and its
lock; keeping them in one engine file is the one-engine-one-file rule of the backends.
"""

from __future__ import annotations

import bisect
import codecs
import ctypes
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import BackendUnavailable, ContextOverflow, MissingDependency, ModelNotFound
from ..harmony import HarmonyParser, is_harmony_metadata
from ..types import LlmDelta
from .base import BaseBackend

log = logging.getLogger("spark_voice.llm")

# used when a GGUF has no chat template (rare): ChatML, as llama.cpp does by default
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                   " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\n' }}{% endif %}")
# turn delimiters that end an answer when a model spells them out as text
TURN_STRINGS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>",
                "<end_of_turn>", "<start_of_turn>", "</s>", "<|end|>", "<|user|>", "<|assistant|>")


def import_llama_cpp(extra: str = "llm") -> Any:
    """``import llama_cpp`` or :class:`MissingDependency` naming the extra to install."""
    try:
        import llama_cpp  # noqa: F401
        import llama_cpp.llama_chat_format  # noqa: F401
    except (ImportError, OSError) as exc:
        raise MissingDependency("llama_cpp", extra, f"{type(exc).__name__}: {exc}") from exc
    return llama_cpp


def gpu_offload_supported() -> bool | None:
    """Whether the installed llama-cpp-python can offload to a GPU (None: not installed)."""
    try:
        llama_cpp = import_llama_cpp()
    except MissingDependency:
        return None
    return bool(llama_cpp.llama_supports_gpu_offload())


def _content(content: Any) -> str:
    """Message content as text: None -> "", OpenAI content parts -> their text joined."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


class _StopStrings:
    """Hold back text that may be the start of a stop string; cut at the first full one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.buf = ""
        self.hit = False

    def push(self, text: str) -> str:
        if not self.stops or self.hit:
            return "" if self.hit else text
        self.buf += text
        cut = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buf, self.hit = self.buf[:cut], "", True
            return out
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(s[:n]):
                    keep = n
                    break
        out = self.buf[:len(self.buf) - keep]
        self.buf = self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class LlamaCppPlacement:
    """Where a llama.cpp model runs, shared by the LLM and the embedder: needs `backend`,
    `n_gpu_layers`, `llm` (the Llama, once loaded), `_offload`, `model_path`, `endpoint_override`."""

    @property
    def device(self) -> str:
        if self.backend != "cuda" or self.n_gpu_layers == 0:
            return "cpu"
        offload = self._offload if self.llm is not None else gpu_offload_supported()
        return "cuda" if offload else "cpu"

    @property
    def endpoint(self) -> str:
        return self.endpoint_override or f"inproc:llama_cpp:{self.model_path}@{self.device}"


class LlamaCppLLM(LlamaCppPlacement, BaseBackend):
    """LanguageModel on ``llama_cpp.Llama``. Attributes after load: ``is_harmony``, ``n_ctx``,
    ``template``, ``metadata``, ``last_stats`` (prompt/completion tokens, trimmed messages,
    finish reason, time to first token of the last generation)."""

    provider = "llama_cpp"
    role = "llm"

    def __init__(self, model_path: str | Path, *, n_ctx: int = 8192, n_threads: int = 2,
                 n_gpu_layers: int = -1, flash_attn: str = "auto", backend: str = "cuda", seed: int = -1,
                 temperature: float = 0.7, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                 repeat_penalty: float = 1.0, max_tokens: int = 256, reasoning_effort: str = "low",
                 endpoint: str = "", n_batch: int = 512) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads)
        self.backend = backend
        self.n_gpu_layers = 0 if backend == "cpu" else int(n_gpu_layers)
        if flash_attn not in ("on", "off", "auto"):
            raise ValueError(f"flash_attn must be on, off or auto, not {flash_attn!r}")
        self.flash_attn_setting = flash_attn
        self.seed = int(seed)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.top_k, self.min_p = int(top_k), float(min_p)
        self.repeat_penalty = float(repeat_penalty)
        self.max_tokens = int(max_tokens)
        self.reasoning_effort = reasoning_effort
        self.endpoint_override = endpoint
        self.n_batch = int(n_batch)
        self.llm: Any = None
        self.metadata: dict[str, str] = {}
        self.template = ""
        self.is_harmony = False
        self.flash_attn = False
        self.last_stats: dict[str, Any] = {}
        self._gen_lock = threading.Lock()
        self._formatter: Any = None
        self._stop_strings: list[str] = []
        self._add_bos = False
        self._bos_text = ""

    @classmethod
    def from_settings(cls, settings) -> "LlamaCppLLM":
        return cls(settings.model_path("llm"), n_ctx=settings.llm_ctx_size, n_threads=settings.llm_threads,
                   n_gpu_layers=settings.llm_n_gpu_layers, flash_attn=settings.llm_flash_attn,
                   backend=settings.backend, seed=settings.llm_seed, temperature=settings.llm_temperature,
                   top_p=settings.llm_top_p, max_tokens=settings.llm_max_tokens,
                   reasoning_effort=settings.llm_reasoning_effort, endpoint=settings.llm_endpoint)

    # ------------------------------------------------------------------ load / probe / health
    def _load(self) -> None:
        llama_cpp = import_llama_cpp("llm")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.model_path.is_file():
            raise ModelNotFound(f"LLM model {self.model_path} not found (LLM_MODEL / LLM_MODEL_DIR); for the "
                                f"small dev model run `spark-voice models prepare --small`")
        offload = bool(llama_cpp.llama_supports_gpu_offload())
        self.flash_attn = {"on": True, "off": False}.get(self.flash_attn_setting,
                                                         offload and self.n_gpu_layers != 0)
        try:
            llm = llama_cpp.Llama(
                model_path=str(self.model_path), n_ctx=self.n_ctx, n_batch=min(self.n_batch, self.n_ctx),
                n_threads=self.n_threads, n_threads_batch=self.n_threads, n_gpu_layers=self.n_gpu_layers,
                flash_attn=self.flash_attn, seed=llama_cpp.LLAMA_DEFAULT_SEED if self.seed < 0 else self.seed,
                verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendUnavailable(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        self.metadata = dict(llm.metadata or {})
        self.template = self.metadata.get("tokenizer.chat_template") or ""
        if not self.template:
            log.warning("GGUF has no chat template; using ChatML", extra={"model": str(self.model_path)})
            self.template = CHATML_TEMPLATE
        self.is_harmony = is_harmony_metadata({**self.metadata, "tokenizer.chat_template": self.template})
        model = llm._model
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        eos_text = model.token_get_text(eos_id) if eos_id >= 0 else ""
        self._bos_text = model.token_get_text(bos_id) if bos_id >= 0 else ""
        self._formatter = Jinja2ChatFormatter(template=self.template, eos_token=eos_text, bos_token=self._bos_text,
                                              add_generation_prompt=True)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        # the template decides about BOS; add one only when the vocab wants it and the template has none
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab)) and bos_id >= 0
        self._stop_strings = [] if self.is_harmony else [
            s for s in dict.fromkeys([eos_text, *TURN_STRINGS]) if s and (s == eos_text or s in self.template)]
        self._vocab = vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._get_attr = llama_cpp.llama_vocab_get_attr
        self._to_piece = llama_cpp.llama_token_to_piece
        self._control = int(llama_cpp.LLAMA_TOKEN_ATTR_CONTROL)
        self._offload = offload
        self.llm = llm
        log.info("llm loaded", extra={"model": str(self.model_path), "harmony": self.is_harmony,
                                      "n_ctx": self.n_ctx, "n_gpu_layers": self.n_gpu_layers,
                                      "flash_attn": self.flash_attn, "device": self.device})

    def _probe(self) -> None:
        # a generation in progress proves the engine works; never queue behind it
        if not self._gen_lock.acquire(blocking=False):
            return
        try:
            tokens = self._tokenize_prompt([{"role": "user", "content": "Hi"}])
            n = 0
            for _ in self._tokens(tokens, max_tokens=2, temperature=0.0, cancel=None):
                n += 1
            if n == 0 and self.last_stats.get("finish_reason") != "stop":
                raise BackendUnavailable("llama.cpp probe generated no token")
        finally:
            self._gen_lock.release()

    def warnings(self) -> list[str]:
        out = []
        if self.backend == "cuda":
            if self.n_gpu_layers == 0:
                out.append("llm: BACKEND=cuda but LLM_N_GPU_LAYERS=0: the LLM runs on the CPU")
            elif gpu_offload_supported() is False:
                out.append("llm: BACKEND=cuda but llama-cpp-python was built without GPU offload: "
                           "the LLM runs on the CPU (rebuild it with CUDA, see bindings/)")
        return out

    def close(self) -> None:
        with self._gen_lock:
            if self.llm is not None:
                self.llm.close()
                self.llm = None
        super().close()

    # ------------------------------------------------------------------ prompt
    def render(self, messages: Sequence[dict]) -> str:
        """The prompt text of `messages` by the GGUF's chat template (generation prompt added)."""
        self.load()
        msgs = [{**m, "content": _content(m.get("content"))} for m in messages]
        kwargs = {"reasoning_effort": self.reasoning_effort} if self.is_harmony else {}
        return self._formatter(messages=msgs, **kwargs).prompt

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens of `messages` rendered with the model's chat template (for `usage`)."""
        return len(self.tokenize(self.render(messages)))

    def tokenize(self, text: str) -> list[int]:
        self.load()
        toks = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if self._add_bos and not (self._bos_text and text.startswith(self._bos_text)):
            toks = [self.llm.token_bos(), *toks]
        return toks

    def _tokenize_prompt(self, messages: Sequence[dict]) -> list[int]:
        return self.tokenize(self.render(messages))

    def fit(self, messages: Sequence[dict], max_tokens: int) -> tuple[list[int], int]:
        """Prompt tokens of `messages`, oldest exchanges dropped until prompt + max_tokens fit n_ctx.

        Returns (tokens, number of messages dropped). Raises ContextOverflow when the system
        message plus the last user message alone do not fit."""
        messages = list(messages)
        if not messages:
            raise ContextOverflow("no messages to answer")
        budget = self.n_ctx - max_tokens
        head = messages[:1] if messages[0].get("role") in ("system", "developer") else []
        rest = messages[len(head):]
        last_user = max((i for i, m in enumerate(rest) if m.get("role") == "user"), default=len(rest) - 1)
        history, tail = rest[:max(last_user, 0)], rest[max(last_user, 0):]
        # exchange boundaries: each starts at a user message (drop whole exchanges, oldest first)
        starts = [i for i, m in enumerate(history) if m.get("role") == "user" and i > 0] + [len(history)]
        starts = [0, *starts] if history else [0]

        cache: dict[int, list[int]] = {}

        def tokens_for(k: int) -> list[int]:  # k = exchanges dropped
            if k not in cache:
                cache[k] = self._tokenize_prompt(head + history[starts[k]:] + tail)
            return cache[k]

        full = tokens_for(0)
        if len(full) <= budget:
            return full, 0
        last = len(starts) - 1
        minimal = tokens_for(last)
        if len(minimal) > budget:
            raise ContextOverflow(
                f"the prompt needs {len(minimal)} tokens (system message + last user message) and "
                f"{max_tokens} more are reserved for the answer, but the context holds {self.n_ctx} "
                f"(LLM_CTX_SIZE); shorten the message or raise LLM_CTX_SIZE")
        # smallest k whose prompt fits (fitting is monotonic in k)
        k = bisect.bisect_left(range(last + 1), True, key=lambda j: len(tokens_for(j)) <= budget)
        dropped = starts[k]
        log.info("llm history trimmed", extra={"dropped_messages": dropped, "prompt_tokens": len(cache[k]),
                                               "n_ctx": self.n_ctx})
        return cache[k], dropped

    # ------------------------------------------------------------------ generation
    def _piece(self, token: int, special: bool, buf: list) -> bytes:
        n = self._to_piece(self._vocab, token, buf[0], len(buf[0]), 0, special)
        if n < 0:
            buf[0] = ctypes.create_string_buffer(-n)
            n = self._to_piece(self._vocab, token, buf[0], len(buf[0]), 0, special)
        return buf[0].raw[:n]

    def _tokens(self, prompt: list[int], *, max_tokens: int, temperature: float,
                cancel: threading.Event | None,
                logits_processor: Callable | None = None) -> Iterator[tuple[int, str]]:
        """(token, text) as generated; the caller holds the generation lock. Sets last_stats."""
        llm = self.llm
        harmony = self.is_harmony
        is_eog, get_attr, vocab, control = self._is_eog, self._get_attr, self._vocab, self._control
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        buf = [ctypes.create_string_buffer(64)]
        stats = {"prompt_tokens": len(prompt), "completion_tokens": 0, "finish_reason": "length",
                 "ttft_s": None, "seconds": 0.0}
        self.last_stats = stats
        t0 = time.perf_counter()
        procs = None
        if logits_processor is not None:
            from llama_cpp import LogitsProcessorList

            procs = LogitsProcessorList([logits_processor])
        gen = llm.generate(prompt, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                           temp=temperature, repeat_penalty=self.repeat_penalty, logits_processor=procs)
        n = 0
        try:
            while n < max_tokens:
                if cancel is not None and cancel.is_set():
                    stats["finish_reason"] = "cancelled"
                    break
                token = next(gen)
                if stats["ttft_s"] is None:
                    stats["ttft_s"] = time.perf_counter() - t0
                if is_eog(vocab, token) or (not harmony and get_attr(vocab, token) & control):
                    stats["finish_reason"] = "stop"
                    break
                n += 1
                stats["completion_tokens"] = n
                yield token, decoder.decode(self._piece(token, harmony, buf))
        except StopIteration:
            stats["finish_reason"] = "stop"
        except RuntimeError as exc:  # llama_decode failed: the KV state is unknown
            llm.reset()
            raise BackendUnavailable(f"llama.cpp generation failed: {exc}") from exc
        finally:
            gen.close()
            stats["seconds"] = time.perf_counter() - t0
        tail = decoder.decode(b"", final=True)
        if tail:
            yield -1, tail

    def stream_chat(self, messages: list[dict], *, max_tokens: int | None = None,
                    temperature: float | None = None, cancel: threading.Event | None = None,
                    logits_processor: Callable | None = None) -> Iterator[LlmDelta]:
        """Stream the answer. `logits_processor(input_ids, scores) -> scores` is for tests/steering."""
        self.load()
        max_tokens = self.max_tokens if max_tokens is None else int(max_tokens)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        temp = self.temperature if temperature is None else float(temperature)
        with self._gen_lock:
            if cancel is not None and cancel.is_set():
                return
            if self.llm is None:
                raise BackendUnavailable("the LLM was closed")
            prompt, dropped = self.fit(messages, max_tokens)
            tokens = self._tokens(prompt, max_tokens=max_tokens, temperature=temp, cancel=cancel,
                                  logits_processor=logits_processor)
            try:
                if self.is_harmony:
                    yield from self._harmony(tokens)
                else:
                    yield from self._plain(tokens)
            finally:
                tokens.close()
                self.last_stats["dropped_messages"] = dropped

    def _plain(self, tokens: Iterator[tuple[int, str]]) -> Iterator[LlmDelta]:
        stops = _StopStrings(self._stop_strings)
        for _, text in tokens:
            out = stops.push(text)
            if out:
                yield LlmDelta(out)
            if stops.hit:
                self.last_stats["finish_reason"] = "stop"
                return
        rest = stops.flush()
        if rest:
            yield LlmDelta(rest)

    def _harmony(self, tokens: Iterator[tuple[int, str]]) -> Iterator[LlmDelta]:
        parser = HarmonyParser()
        for _, text in tokens:
            for channel, piece in parser.feed(text):
                yield LlmDelta(piece, channel)  # type: ignore[arg-type]
            if parser.done:
                self.last_stats["finish_reason"] = "stop"
                return
        for channel, piece in parser.finish():
            yield LlmDelta(piece, channel)  # type: ignore[arg-type]
