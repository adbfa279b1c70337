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

Tools: ``stream_chat(tools=, tool_choice=)``. gpt-oss gets them through its template (harmony
``functions`` namespace); the output is parsed on the GGUF's special-token ids
(:class:`~spark_voice.harmony.HarmonyParser`) and a call to ``functions.X`` comes as ``tool_call``
deltas. Other models use their template's own tool format if it has one, else the functions are
described in the system message and called as ``<tool_call>{json}</tool_call>``
(:mod:`.chat_format`). Arguments are generated under a llama.cpp grammar built from the function's
JSON schema: from the start for a named ``tool_choice`` or ``required`` (the function name is
picked by a grammar over the names), and in ``auto`` as soon as the model opens a call.

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
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Sequence

from ..errors import BackendUnavailable, ContextOverflow, MissingDependency, ModelNotFound
from ..harmony import MARKERS, HarmonyParser, is_harmony_metadata
from ..tools import ToolCall, ToolError, normalize_tool_choice, parameters_schema, parse_tool_json, tool_by_name
from ..types import LlmDelta
from .base import BaseBackend
from .chat_format import (
    StopStrings,
    ToolText,
    call_schema,
    harmony_messages,
    prompted_messages,
    template_messages,
)

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


class LlamaCppPlacement:
    """Where a llama.cpp model runs, shared by the LLM and the embedder: needs `backend`,
    `n_gpu_layers`, `llm` (the Llama, once loaded), `_offload`, `model_path`, `endpoint_override`."""

    backend: str
    n_gpu_layers: int
    llm: Any
    _offload: bool
    model_path: Path
    endpoint_override: str

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
        self._specials: dict[int, str] = {}
        self.tool_format = ""

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
        # harmony markers by token id (from this GGUF's vocabulary, not from text)
        self._specials = {}
        if self.is_harmony:
            for marker in MARKERS:
                # one special token (llama.cpp marks some of them USER_DEFINED rather than CONTROL)
                ids = llm.tokenize(marker.encode(), add_bos=False, special=True)
                special = self._control | int(llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED)
                if len(ids) == 1 and llama_cpp.llama_vocab_get_attr(vocab, ids[0]) & special:
                    self._specials[ids[0]] = marker
        self.tool_format = "harmony" if self.is_harmony else (
            "template" if re.search(r"\btools\b", self.template) else "prompted")
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
            stats = self._new_stats(tokens)
            for _, _, stop in self._tokens(tokens, stats, max_tokens=2, temperature=0.0, cancel=None):
                n += 0 if stop else 1
            if n == 0 and stats.get("finish_reason") != "stop":
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
    supports_tools = True

    @property
    def special_ids(self) -> dict[int, str]:
        """Harmony marker token ids of this GGUF's vocabulary -> marker text (empty for other models)."""
        return dict(self._specials)

    def _prepare(self, messages: Sequence[dict], tools: Sequence[dict]) -> tuple[list[dict], dict]:
        """Messages in the shape this model's chat template wants, and the template kwargs."""
        kwargs: dict[str, Any] = {"reasoning_effort": self.reasoning_effort} if self.is_harmony else {}
        if self.tool_format == "harmony":
            msgs = harmony_messages(messages)
        elif self.tool_format == "template":
            msgs = template_messages(messages)
        else:
            msgs = prompted_messages(messages, tools)
        if tools and self.tool_format in ("harmony", "template"):
            kwargs["tools"] = [dict(t) for t in tools]
        return msgs, kwargs

    def render(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> str:
        """The prompt text of `messages` (and `tools`) by the GGUF's chat template (generation prompt added)."""
        self.load()
        msgs, kwargs = self._prepare(messages, list(tools or []))
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

    def _tokenize_prompt(self, messages: Sequence[dict], tools: Sequence[dict] = ()) -> list[int]:
        return self.tokenize(self.render(messages, tools))

    def fit(self, messages: Sequence[dict], max_tokens: int,
            tools: Sequence[dict] = ()) -> tuple[list[int], int]:
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
                cache[k] = self._tokenize_prompt(head + history[starts[k]:] + tail, tools)
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

    def grammar(self, schema: dict) -> Any:
        """A llama.cpp grammar that accepts exactly the JSON documents of `schema`."""
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        try:
            gbnf = json_schema_to_gbnf(json.dumps(schema))
        except Exception as exc:  # unsupported schema feature
            raise ToolError(f"the tool's JSON schema cannot be turned into a grammar: {exc}") from exc
        # llama-cpp-python's string rule lets control characters into strings, which JSON forbids
        gbnf = gbnf.replace(r'char ::= [^"\\] |', r'char ::= [^"\\\x7F\x00-\x1F] |')
        return LlamaGrammar.from_string(gbnf, verbose=False)

    # ------------------------------------------------------------------ generation
    def _piece(self, token: int, special: bool, buf: list) -> bytes:
        n = self._to_piece(self._vocab, token, buf[0], len(buf[0]), 0, special)
        if n < 0:
            buf[0] = ctypes.create_string_buffer(-n)
            n = self._to_piece(self._vocab, token, buf[0], len(buf[0]), 0, special)
        return buf[0].raw[:n]

    @staticmethod
    def _new_stats(prompt: Sequence[int]) -> dict[str, Any]:
        return {"prompt_tokens": len(prompt), "completion_tokens": 0, "finish_reason": "length",
                "ttft_s": None, "seconds": 0.0}

    def _tokens(self, prompt: list[int], stats: dict[str, Any], *, max_tokens: int, temperature: float,
                cancel: threading.Event | None, logits_processor: Callable | None = None,
                grammar: Any = None, n_threads: Callable[[], int] | None = None) -> Iterator[tuple[int, bytes, bool]]:
        """(token, piece bytes, is_stop) as generated; the caller holds the generation lock.

        Counts into `stats` (completion_tokens: every sampled token except the stop token;
        finish_reason: stop | length | cancelled). A harmony model's stop token (``<|return|>``,
        ``<|call|>``) is yielded last (is_stop=True) so that the parser sees it; other models
        stop at any end-of-generation or control token, which is not yielded. `n_threads`: read
        before each decode (the prompt's included); the context is set back to LLM_THREADS after."""
        llm = self.llm
        harmony = self.is_harmony
        is_eog, get_attr, vocab, control = self._is_eog, self._get_attr, self._vocab, self._control
        buf = [ctypes.create_string_buffer(64)]
        t0 = time.perf_counter()
        procs = None
        if logits_processor is not None:
            from llama_cpp import LogitsProcessorList

            procs = LogitsProcessorList([logits_processor])
        gen = llm.generate(prompt, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                           temp=temperature, repeat_penalty=self.repeat_penalty, logits_processor=procs,
                           grammar=grammar)
        n = 0
        stats["finish_reason"] = "length"
        threads = self.n_threads
        try:
            while n < max_tokens:
                if cancel is not None and cancel.is_set():
                    stats["finish_reason"] = "cancelled"
                    break
                if n_threads is not None and (want := max(1, int(n_threads()))) != threads:
                    threads = want
                    self._set_threads(want)
                token = next(gen)
                if stats["ttft_s"] is None:
                    stats["ttft_s"] = time.perf_counter() - t0
                if is_eog(vocab, token) or (not harmony and get_attr(vocab, token) & control):
                    stats["finish_reason"] = "stop"
                    if harmony:
                        yield token, b"", True
                    break
                n += 1
                stats["completion_tokens"] += 1
                yield token, self._piece(token, False, buf), False
        except StopIteration:
            stats["finish_reason"] = "stop"
        except RuntimeError as exc:  # llama_decode failed: the KV state is unknown
            llm.reset()
            raise BackendUnavailable(f"llama.cpp generation failed: {exc}") from exc
        finally:
            gen.close()
            if threads != self.n_threads:
                self._set_threads(self.n_threads)
            stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - t0

    def _set_threads(self, n: int) -> None:
        """llama_set_n_threads on the context (generation and batch threads), between decodes."""
        import llama_cpp

        llama_cpp.llama_set_n_threads(self.llm.ctx, n, n)

    def stream_chat(self, messages: list[dict], *, max_tokens: int | None = None,
                    temperature: float | None = None, cancel: threading.Event | None = None,
                    logits_processor: Callable | None = None, tools: Sequence[dict] | None = None,
                    tool_choice: Any = None, stats: dict[str, Any] | None = None,
                    n_threads: Callable[[], int] | None = None) -> Iterator[LlmDelta]:
        """Stream the answer. `logits_processor(input_ids, scores) -> scores` is for tests/steering.

        `tools` (OpenAI function specs) and `tool_choice` (auto | none | required | a named
        function): a tool call comes as ``tool_call`` deltas (arguments, never spoken) and
        finish_reason ``tool_calls``. ``required`` and a named function constrain the arguments
        with a grammar built from the function's JSON schema. `stats` (a dict) is filled with the
        engine's counts: prompt_tokens, completion_tokens, finish_reason, ttft_s, seconds,
        dropped_messages (also kept in ``last_stats``). `n_threads() -> int`: the threads to use,
        read between tokens (a speculative start shares the cores with the final STT decode)."""
        self.load()
        max_tokens = self.max_tokens if max_tokens is None else int(max_tokens)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        temp = self.temperature if temperature is None else float(temperature)
        tools = [t for t in (tools or []) if isinstance(t, dict)]
        mode, name = normalize_tool_choice(tool_choice, tools)
        offered = tools if mode != "none" else []
        if mode == "required" and len(offered) == 1:
            mode, name = "function", str(offered[0]["function"]["name"])
        with self._gen_lock:
            if cancel is not None and cancel.is_set():
                return
            if self.llm is None:
                raise BackendUnavailable("the LLM was closed")
            prompt, dropped = self.fit(messages, max_tokens, offered)
            st = stats if stats is not None else {}
            st.clear()
            st.update(self._new_stats(prompt), dropped_messages=dropped)
            self.last_stats = st
            kw = dict(max_tokens=max_tokens, temperature=temp, cancel=cancel, logits_processor=logits_processor,
                      n_threads=n_threads)
            if self.is_harmony:
                yield from self._harmony(prompt, st, kw, mode, name, offered)
            else:
                yield from self._plain(prompt, st, kw, mode, name, offered)

    # ------------------------------------------------------------------ benchmark hooks
    @property
    def raw_label(self) -> str:
        """What :meth:`raw_generate` calls (for the bench report)."""
        return ("llama_cpp Llama.generate on the backend's model (same sampling), detokenized"
                + (", harmony final channel" if self.is_harmony else ""))

    def raw_generate(self, messages: Sequence[dict]) -> Callable[[], Generator[str, None, None]]:
        """The bare engine generation behind :meth:`stream_chat`, for ``spark-voice bench``'s LLM floor.

        Loads the model and renders and tokenizes `messages` here, outside the returned call. The
        returned callable starts ``Llama.generate`` on this backend's model with its sampling
        parameters and yields the text of each token (llama-cpp-python's own detokenizer, UTF-8
        safe; for gpt-oss only the harmony ``final`` channel) until an end-of-generation token
        (other models: also a control token) or ``max_tokens``: no context fitting, tools, stop
        strings, lock, statistics or cancellation. Closing the iterator stops the generation.
        """
        prompt = self.tokenize(self.render(messages))
        llm, harmony, max_tokens, specials = self.llm, self.is_harmony, self.max_tokens, dict(self._specials)
        is_eog, get_attr, vocab, control = self._is_eog, self._get_attr, self._vocab, self._control

        def pieces() -> Generator[str, None, None]:
            gen = llm.generate(prompt, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                               temp=self.temperature, repeat_penalty=self.repeat_penalty)
            dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
            parser = HarmonyParser(specials) if harmony else None
            try:
                for n, tok in enumerate(gen):
                    if n >= max_tokens or is_eog(vocab, tok) or (not harmony and get_attr(vocab, tok) & control):
                        return
                    if parser is None:
                        yield dec.decode(llm.detokenize([tok]))
                        continue
                    yield "".join(d.text for d in parser.feed(tok, llm.detokenize([tok]))
                                  if d.channel == "final" and not d.recipient)
                    if parser.done:
                        return
            finally:
                gen.close()
        return pieces

    def reset_cache(self) -> None:
        """Forget the KV cache, so that the next prompt is evaluated in full (benchmarks: a repeated
        prompt must not be served from the cache of the last one)."""
        with self._gen_lock:
            if self.llm is not None:
                self.llm.reset()

    # ------------------------------------------------------------------ non-harmony models
    def _plain(self, prompt: list[int], st: dict, kw: dict, mode: str, name: str,
               tools: list[dict]) -> Iterator[LlmDelta]:
        if mode in ("function", "required"):
            names = [name] if mode == "function" else [str(t["function"]["name"]) for t in tools]
            schema = {"anyOf": [call_schema(n, parameters_schema(tool_by_name(tools, n))) for n in names]}
            if len(names) == 1:
                schema = schema["anyOf"][0]
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            text = "".join(decoder.decode(p) for _, p, _ in self._tokens(prompt, st, grammar=self.grammar(schema),
                                                                          **kw))
            text += decoder.decode(b"", final=True)
            made = parse_tool_json(text) if st["finish_reason"] != "cancelled" else []
            for i, c in enumerate(made):
                yield LlmDelta(c.arguments, "commentary", kind="tool_call", recipient=f"functions.{c.name}",
                               content_type="json", index=i)
            if made:
                st["finish_reason"] = "tool_calls"
            return
        stops = StopStrings(self._stop_strings)
        scan = ToolText() if tools else None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        budget, grammar, generated = kw["max_tokens"], None, list(prompt)
        while True:
            switch = False
            for tok, piece, _ in self._tokens(generated, st, grammar=grammar, **kw):
                generated.append(tok)
                out = stops.push(decoder.decode(piece))
                if scan is not None:
                    out = scan.push(out)
                if out:
                    yield LlmDelta(out)
                if stops.hit:
                    st["finish_reason"] = "stop"
                    break
                # the model opened a <tool_call>: the JSON of the call follows the functions' schemas
                if grammar is None and scan is not None and scan.calls_text is not None \
                        and not scan.calls_text.strip():
                    switch = True
                    break
            if not switch or budget - st["completion_tokens"] <= 0:
                break
            schema = {"anyOf": [call_schema(str(t["function"]["name"]), parameters_schema(t["function"]))
                                for t in tools]}
            grammar, kw = self.grammar(schema), {**kw, "max_tokens": budget - st["completion_tokens"]}
        rest = "" if stops.hit else stops.push(decoder.decode(b"", final=True)) + stops.flush()
        calls: list[ToolCall] = []
        if scan is not None:
            rest, calls = scan.finish(scan.push(rest) if rest else "")
        if rest:
            yield LlmDelta(rest)
        for i, c in enumerate(calls):
            yield LlmDelta(c.arguments, "commentary", kind="tool_call", recipient=f"functions.{c.name}",
                           content_type="json", index=i)
        if calls and st["finish_reason"] != "cancelled":
            st["finish_reason"] = "tool_calls"

    # ------------------------------------------------------------------ harmony (gpt-oss)
    def _harmony(self, prompt: list[int], st: dict, kw: dict, mode: str, name: str,
                 tools: list[dict]) -> Iterator[LlmDelta]:
        parser = HarmonyParser(self._specials)
        prefix: list[int] = []

        def feed(tokens: Iterator[tuple[int, bytes, bool]]) -> Iterator[LlmDelta]:
            for tok, piece, _ in tokens:
                prefix.append(tok)
                for d in parser.feed(tok, piece):
                    yield _delta(d)
                if parser.done:
                    return

        def prefill(text: str) -> None:  # header tokens we write for the model (part of the prompt)
            ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            for t in ids:
                parser.feed(t, self._piece(t, False, [ctypes.create_string_buffer(64)]))
            prefix.extend(ids)
            st["prompt_tokens"] += len(ids)

        if mode == "required":  # pick the function first (a grammar over the names), then its arguments
            from llama_cpp.llama_grammar import LlamaGrammar

            prefill("<|channel|>commentary to=functions.")
            names = [str(t["function"]["name"]) for t in tools]
            pick = LlamaGrammar.from_string("root ::= " + " | ".join(json.dumps(n) for n in names), verbose=False)
            chosen = b""
            for tok, piece, stop in self._tokens(prompt + prefix, st, grammar=pick, **kw):
                if stop:
                    break
                prefix.append(tok)
                parser.feed(tok, piece)
                chosen += piece
            name = chosen.decode("utf-8", "replace")
            if st["finish_reason"] != "stop" or name not in names:
                return
            st["finish_reason"] = "length"
            kw = {**kw, "max_tokens": max(1, kw["max_tokens"] - st["completion_tokens"])}
            prefill(" <|constrain|>json<|message|>")
            yield from feed(self._tokens(prompt + prefix, st, grammar=self.grammar(
                parameters_schema(tool_by_name(tools, name))), **kw))
        elif mode == "function":
            prefill(f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>")
            yield from feed(self._tokens(prompt + prefix, st, grammar=self.grammar(
                parameters_schema(tool_by_name(tools, name))), **kw))
        else:
            # free generation; once the model opens a call to one of the functions, its arguments
            # are generated under that function's JSON-schema grammar (they always parse and fit)
            budget = kw["max_tokens"]
            schemas = {f"functions.{t['function']['name']}": parameters_schema(t["function"]) for t in tools}
            grammar = None
            while True:
                switch = None
                for tok, piece, _ in self._tokens(prompt + prefix, st, grammar=grammar, **kw):
                    prefix.append(tok)
                    for d in parser.feed(tok, piece):
                        if mode != "none" or d.recipient == "":
                            yield _delta(d)
                    if parser.done:
                        break
                    m = parser.current
                    if grammar is None and m is not None and not m.content and m.recipient in schemas:
                        switch = m.recipient
                        break
                if switch is None or parser.done:
                    break
                left = budget - st["completion_tokens"]
                if left <= 0:
                    st["finish_reason"] = "length"
                    break
                grammar, kw = self.grammar(schemas[switch]), {**kw, "max_tokens": left}
        for d in parser.finish():
            if mode != "none" or d.recipient == "":
                yield _delta(d)
        calls = [m for m in parser.messages if m.recipient]
        if mode == "none":
            if parser.stop:
                st["finish_reason"] = "stop"
        elif parser.stop == "call" or (calls and calls[-1].end):
            if st["finish_reason"] != "cancelled":
                st["finish_reason"] = "tool_calls"
        elif parser.stop:
            st["finish_reason"] = "stop"
        st["harmony_warnings"] = list(parser.warnings)


def _delta(d: Any) -> LlmDelta:
    kind = "tool_call" if d.recipient else "text"
    return LlmDelta(d.text, d.channel, kind=kind, recipient=d.recipient,  # type: ignore[arg-type]
                    content_type=d.content_type, index=d.index)
