# ruff: noqa: E501  (the real gpt-oss chat template is embedded verbatim)
"""Tiny random-weight gpt-oss GGUF fixture (for tests; a few hundred KB).

A test fixture generator, so it lives under tests/ (no user-facing command uses it:
``spark-voice models prepare --small`` does not build it). Import it from a test as
``from tiny_gptoss import build_tiny_gptoss`` (tests/ is on sys.path, as for conftest).

``build_tiny_gptoss(out_path)`` writes a llama.cpp ``gpt-oss`` (LLM_ARCH_OPENAI_MOE)
model with the same tensor set / hparam keys as the real gpt-oss-20b GGUF
(attention sinks, q/k/v/o biases, post-attention RMS norm, MoE experts with
biases, alternating sliding-window layers, YaRN rope) but tiny shapes and
random weights, plus a byte-level BPE ("gpt2" model, "gpt-4o" pre-tokenizer)
vocab containing the o200k_harmony special tokens and the real gpt-oss
chat template (``tokenizer.chat_template``), so harmony prompt rendering,
tokenization of special tokens and streaming can be exercised without the
12 GB model.

Special token layout mirrors o200k_harmony order (ids are offset):
``<|startoftext|>`` bos, ``<|endoftext|>`` pad, ``<|return|>`` eos,
``<|constrain|>``, ``<|channel|>``, ``<|start|>``, ``<|end|>``, ``<|message|>``,
``<|call|>``, ``<|endofprompt|>`` – all CONTROL tokens.  As for the real model,
llama.cpp marks ``<|return|>``/``<|call|>`` as EOG and drops ``<|end|>`` from EOG.

numpy + gguf only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spark_voice.fsutil import atomic_path
from spark_voice.models.bpe import bytes_to_unicode

__all__ = ["build_tiny_gptoss", "GPT_OSS_CHAT_TEMPLATE", "HARMONY_SPECIAL_TOKENS", "TINY_GPTOSS_NAME"]

TINY_GPTOSS_NAME = "gpt-oss tiny random"

# (token, offset from first special id) – same relative order as o200k_harmony (199998..200018)
HARMONY_SPECIAL_TOKENS: list[str] = [
    "<|startoftext|>",      # 199998 bos
    "<|endoftext|>",        # 199999 pad
    "<|reserved_200000|>",
    "<|reserved_200001|>",
    "<|return|>",           # 200002 eos
    "<|constrain|>",        # 200003
    "<|reserved_200004|>",
    "<|channel|>",          # 200005
    "<|start|>",            # 200006
    "<|end|>",              # 200007
    "<|message|>",          # 200008
    "<|reserved_200009|>",
    "<|reserved_200010|>",
    "<|reserved_200011|>",
    "<|call|>",             # 200012
    "<|reserved_200013|>",
    "<|reserved_200014|>",
    "<|reserved_200015|>",
    "<|reserved_200016|>",
    "<|reserved_200017|>",
    "<|endofprompt|>",      # 200018
]

# Words whose left-to-right merge chains are added as BPE merges, so common
# English / harmony pieces are not purely byte-level (GPT-2 byte alphabet:
# "Ġ" = space, "Ċ" = newline).
_MERGE_WORDS: list[str] = [
    "Ġthe", "Ġand", "Ġyou", "Ġis", "Ġof", "Ġto", "Ġin", "Ġa", "Ġhello", "Hello",
    "system", "user", "assistant", "analysis", "final", "commentary", "developer",
    "Reasoning", "Ġmedium", "Ġlow", "Ġhigh", "ĠYou", "ĠChatGPT", "ĠOpenAI", "ĊĊ",
    "Ġweather", "Ġtoday", "Ġtime", "Ġwhat", "Ġhow",
]


def _build_vocab() -> tuple[list[str], list[int], list[str], dict[str, int]]:
    byte_tokens = list(bytes_to_unicode().values())  # order: "!" '"' ... like o200k
    tokens: list[str] = list(byte_tokens)
    seen = set(tokens)
    merges: list[str] = []
    merge_set: set[str] = set()
    for word in _MERGE_WORDS:
        cur = word[0]
        for ch in word[1:]:
            m = f"{cur} {ch}"
            cur = cur + ch
            if m not in merge_set:
                merge_set.add(m)
                merges.append(m)
            if cur not in seen:
                seen.add(cur)
                tokens.append(cur)
    toktypes = [1] * len(tokens)  # NORMAL
    # pad normal region to a round number, then the special block
    while len(tokens) < 448:
        tokens.append(f"<|reserved_pad_{len(tokens)}|>")
        toktypes.append(5)  # UNUSED
    special_ids: dict[str, int] = {}
    for t in HARMONY_SPECIAL_TOKENS:
        special_ids[t] = len(tokens)
        tokens.append(t)
        toktypes.append(3)  # CONTROL
    while len(tokens) % 32:
        tokens.append(f"<|reserved_{len(tokens)}|>")
        toktypes.append(3)
    return tokens, toktypes, merges, special_ids


def build_tiny_gptoss(out_path: str | os.PathLike, *, seed: int = 0, n_embd: int = 64,
                      n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2, head_dim: int = 32,
                      n_expert: int = 4, n_expert_used: int = 2, n_ff: int = 64,
                      sliding_window: int = 128, context_length: int = 8192,
                      suppress_special: bool = True, chat_template: str | None = None) -> Path:
    """Write a tiny random gpt-oss GGUF to ``out_path`` (atomic) and return its path.

    ``suppress_special=True`` gives every token embedding a large constant
    component and the output rows of CONTROL tokens a large negative weight on
    it, so greedy/sampled generation never emits ``<|return|>``/``<|call|>``
    (streaming tests get exactly ``max_tokens`` tokens).  With ``False`` the
    logits are plain random.
    """
    import gguf

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, toktypes, merges, sid = _build_vocab()
    n_vocab = len(tokens)
    q_dim = n_head * head_dim
    kv_dim = n_head_kv * head_dim

    def rnd(*shape: int, std: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def f16(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float16)

    # numpy shapes are the reverse of ggml ne[] (llama-model.cpp create_tensor dims)
    tok_embd = rnd(n_vocab, n_embd, std=1.0)
    output = rnd(n_vocab, n_embd, std=1.0)
    if suppress_special:
        tok_embd[:, 0] = 8.0           # constant "bias" channel in the residual stream
        special = np.array([t == 3 or t == 5 for t in toktypes])
        output[special, 0] = -10.0     # ~ -55 logit for control/unused tokens (logit_bias can still force them)
        output[~special, 0] = 0.0
    tensors: list[tuple[str, np.ndarray]] = [
        ("token_embd.weight", f16(tok_embd)),
        ("output_norm.weight", np.ones(n_embd, np.float32)),
        ("output.weight", f16(output)),
    ]
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", np.ones(n_embd, np.float32)),
            (p + "attn_q.weight", f16(rnd(q_dim, n_embd))),
            (p + "attn_q.bias", rnd(q_dim, std=0.02)),
            (p + "attn_k.weight", f16(rnd(kv_dim, n_embd))),
            (p + "attn_k.bias", rnd(kv_dim, std=0.02)),
            (p + "attn_v.weight", f16(rnd(kv_dim, n_embd))),
            (p + "attn_v.bias", rnd(kv_dim, std=0.02)),
            (p + "attn_output.weight", f16(rnd(n_embd, q_dim, std=0.02))),
            (p + "attn_output.bias", rnd(n_embd, std=0.02)),
            (p + "attn_sinks.weight", rnd(n_head, std=0.5)),
            (p + "post_attention_norm.weight", np.ones(n_embd, np.float32)),
            (p + "ffn_gate_inp.weight", rnd(n_expert, n_embd)),       # F32 like the converter
            (p + "ffn_gate_inp.bias", rnd(n_expert, std=0.02)),
            (p + "ffn_gate_exps.weight", f16(rnd(n_expert, n_ff, n_embd))),
            (p + "ffn_gate_exps.bias", rnd(n_expert, n_ff, std=0.02)),
            (p + "ffn_up_exps.weight", f16(rnd(n_expert, n_ff, n_embd))),
            (p + "ffn_up_exps.bias", rnd(n_expert, n_ff, std=0.02)),
            (p + "ffn_down_exps.weight", f16(rnd(n_expert, n_embd, n_ff, std=0.02))),
            (p + "ffn_down_exps.bias", rnd(n_expert, n_embd, std=0.02)),
        ]

    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT_OSS]  # "gpt-oss"
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_type("model")
        w.add_name(TINY_GPTOSS_NAME)
        w.add_basename("gpt-oss")
        w.add_size_label("tiny")
        w.add_license("apache-2.0")
        w.add_block_count(n_layer)
        w.add_context_length(context_length)
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_rope_freq_base(150000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(sliding_window)
        w.add_expert_feed_forward_length(n_ff)
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(32.0)
        w.add_rope_scaling_orig_ctx_len(max(1, context_length // 32))
        w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))

        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-4o")
        w.add_token_list(tokens)
        w.add_token_types(toktypes)
        w.add_token_merges(merges)
        w.add_bos_token_id(sid["<|startoftext|>"])
        w.add_eos_token_id(sid["<|return|>"])
        w.add_pad_token_id(sid["<|endoftext|>"])
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        w.add_chat_template(chat_template if chat_template is not None else GPT_OSS_CHAT_TEMPLATE)

        for name, a in tensors:
            w.add_tensor(name, np.ascontiguousarray(a))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


# The real gpt-oss chat template (openai/gpt-oss-20b / -120b chat_template.jinja, Apache-2.0),
# as shipped in llama.cpp models/templates/openai-gpt-oss-120b.jinja and in the
# ggml-org gpt-oss GGUFs' tokenizer.chat_template.  Accepts `reasoning_effort`,
# `model_identity`, `builtin_tools`; uses `strftime_now` and `raise_exception`.
GPT_OSS_CHAT_TEMPLATE = r'''{#-
  In addition to the normal inputs of `messages` and `tools`, this template also accepts the
  following kwargs:
  - "builtin_tools": A list, can contain "browser" and/or "python".
  - "model_identity": A string that optionally describes the model identity.
  - "reasoning_effort": A string that describes the reasoning effort, defaults to "medium".
 #}

{#- Tool Definition Rendering ============================================== #}
{%- macro render_typescript_type(param_spec, required_params, is_nullable=false) -%}
    {%- if param_spec.type == "array" -%}
        {%- if param_spec['items'] -%}
            {%- if param_spec['items']['type'] == "string" -%}
                {{- "string[]" }}
            {%- elif param_spec['items']['type'] == "number" -%}
                {{- "number[]" }}
            {%- elif param_spec['items']['type'] == "integer" -%}
                {{- "number[]" }}
            {%- elif param_spec['items']['type'] == "boolean" -%}
                {{- "boolean[]" }}
            {%- else -%}
                {%- set inner_type = render_typescript_type(param_spec['items'], required_params) -%}
                {%- if inner_type == "object | object" or inner_type|length > 50 -%}
                    {{- "any[]" }}
                {%- else -%}
                    {{- inner_type + "[]" }}
                {%- endif -%}
            {%- endif -%}
            {%- if param_spec.nullable -%}
                {{- " | null" }}
            {%- endif -%}
        {%- else -%}
            {{- "any[]" }}
            {%- if param_spec.nullable -%}
                {{- " | null" }}
            {%- endif -%}
        {%- endif -%}
    {%- elif param_spec.type is defined and param_spec.type is iterable and param_spec.type is not string and param_spec.type is not mapping and param_spec.type[0] is defined -%}
        {#- Handle array of types like ["object", "object"] from Union[dict, list] #}
        {%- if param_spec.type | length > 1 -%}
            {{- param_spec.type | join(" | ") }}
        {%- else -%}
            {{- param_spec.type[0] }}
        {%- endif -%}
    {%- elif param_spec.oneOf -%}
        {#- Handle oneOf schemas - check for complex unions and fallback to any #}
        {%- set has_object_variants = false -%}
        {%- for variant in param_spec.oneOf -%}
            {%- if variant.type == "object" -%}
                {%- set has_object_variants = true -%}
            {%- endif -%}
        {%- endfor -%}
        {%- if has_object_variants and param_spec.oneOf|length > 1 -%}
            {{- "any" }}
        {%- else -%}
            {%- for variant in param_spec.oneOf -%}
                {{- render_typescript_type(variant, required_params) -}}
                {%- if variant.description %}
                    {{- "// " + variant.description }}
                {%- endif -%}
                {%- if variant.default is defined %}
                    {{ "// default: " + variant.default|tojson }}
                {%- endif -%}
                {%- if not loop.last %}
                    {{- " | " }}
                {% endif -%}
            {%- endfor -%}
        {%- endif -%}
    {%- elif param_spec.type == "string" -%}
        {%- if param_spec.enum -%}
            {{- '"' + param_spec.enum|join('" | "') + '"' -}}
        {%- else -%}
            {{- "string" }}
            {%- if param_spec.nullable %}
                {{- " | null" }}
            {%- endif -%}
        {%- endif -%}
    {%- elif param_spec.type == "number" -%}
        {{- "number" }}
    {%- elif param_spec.type == "integer" -%}
        {{- "number" }}
    {%- elif param_spec.type == "boolean" -%}
        {{- "boolean" }}

    {%- elif param_spec.type == "object" -%}
        {%- if param_spec.properties -%}
            {{- "{\n" }}
            {%- for prop_name, prop_spec in param_spec.properties.items() -%}
                {{- prop_name -}}
                {%- if prop_name not in (param_spec.required or []) -%}
                    {{- "?" }}
                {%- endif -%}
                {{- ": " }}
                {{ render_typescript_type(prop_spec, param_spec.required or []) }}
                {%- if not loop.last -%}
                    {{-", " }}
                {%- endif -%}
            {%- endfor -%}
            {{- "}" }}
        {%- else -%}
            {{- "object" }}
        {%- endif -%}
    {%- else -%}
        {{- "any" }}
    {%- endif -%}
{%- endmacro -%}

{%- macro render_tool_namespace(namespace_name, tools) -%}
    {{- "## " + namespace_name + "\n\n" }}
    {{- "namespace " + namespace_name + " {\n\n" }}
    {%- for tool in tools %}
        {%- set tool = tool.function %}
        {{- "// " + tool.description + "\n" }}
        {{- "type "+ tool.name + " = " }}
        {%- if tool.parameters and tool.parameters.properties %}
            {{- "(_: {\n" }}
            {%- for param_name, param_spec in tool.parameters.properties.items() %}
                {%- if param_spec.description %}
                    {{- "// " + param_spec.description + "\n" }}
                {%- endif %}
                {{- param_name }}
                {%- if param_name not in (tool.parameters.required or []) -%}
                    {{- "?" }}
                {%- endif -%}
                {{- ": " }}
                {{- render_typescript_type(param_spec, tool.parameters.required or []) }}
                {%- if param_spec.default is defined -%}
                    {%- if param_spec.enum %}
                        {{- ", // default: " + param_spec.default }}
                    {%- elif param_spec.oneOf %}
                        {{- "// default: " + param_spec.default }}
                    {%- else %}
                        {{- ", // default: " + param_spec.default|tojson }}
                    {%- endif -%}
                {%- endif -%}
                {%- if not loop.last %}
                    {{- ",\n" }}
                {%- else %}
                    {{- ",\n" }}
                {%- endif -%}
            {%- endfor %}
            {{- "}) => any;\n\n" }}
        {%- else -%}
            {{- "() => any;\n\n" }}
        {%- endif -%}
    {%- endfor %}
    {{- "} // namespace " + namespace_name }}
{%- endmacro -%}

{%- macro render_builtin_tools(browser_tool, python_tool) -%}
    {%- if browser_tool %}
        {{- "## browser\n\n" }}
        {{- "// Tool for browsing.\n" }}
        {{- "// The `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n" }}
        {{- "// Cite information from the tool using the following format:\n" }}
        {{- "// `【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n" }}
        {{- "// Do not quote more than 10 words directly from the tool output.\n" }}
        {{- "// sources=web (default: web)\n" }}
        {{- "namespace browser {\n\n" }}
        {{- "// Searches for information related to `query` and displays `topn` results.\n" }}
        {{- "type search = (_: {\n" }}
        {{- "query: string,\n" }}
        {{- "topn?: number, // default: 10\n" }}
        {{- "source?: string,\n" }}
        {{- "}) => any;\n\n" }}
        {{- "// Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, showing `num_lines` lines.\n" }}
        {{- "// Valid link ids are displayed with the formatting: `【{id}†.*】`.\n" }}
        {{- "// If `cursor` is not provided, the most recent page is implied.\n" }}
        {{- "// If `id` is a string, it is treated as a fully qualified URL associated with `source`.\n" }}
        {{- "// If `loc` is not provided, the viewport will be positioned at the beginning of the document or centered on the most relevant passage, if available.\n" }}
        {{- "// Use this function without `id` to scroll to a new location of an opened page.\n" }}
        {{- "type open = (_: {\n" }}
        {{- "id?: number | string, // default: -1\n" }}
        {{- "cursor?: number, // default: -1\n" }}
        {{- "loc?: number, // default: -1\n" }}
        {{- "num_lines?: number, // default: -1\n" }}
        {{- "view_source?: boolean, // default: false\n" }}
        {{- "source?: string,\n" }}
        {{- "}) => any;\n\n" }}
        {{- "// Finds exact matches of `pattern` in the current page, or the page given by `cursor`.\n" }}
        {{- "type find = (_: {\n" }}
        {{- "pattern: string,\n" }}
        {{- "cursor?: number, // default: -1\n" }}
        {{- "}) => any;\n\n" }}
        {{- "} // namespace browser\n\n" }}
    {%- endif -%}

    {%- if python_tool %}
        {{- "## python\n\n" }}
        {{- "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. This tool should be used for internal reasoning, but not for code that is intended to be visible to the user (e.g. when creating plots, tables, or files).\n\n" }}
        {{- "When you send a message containing Python code to python, it will be executed in a stateful Jupyter notebook environment. python will respond with the output of the execution or time out after 120.0 seconds. The drive at '/mnt/data' can be used to save and persist user files. Internet access for this session is UNKNOWN. Depends on the cluster.\n\n" }}
    {%- endif -%}
{%- endmacro -%}

{#- System Message Construction ============================================ #}
{%- macro build_system_message() -%}
    {%- if model_identity is not defined %}
        {%- set model_identity = "You are ChatGPT, a large language model trained by OpenAI." %}
    {%- endif %}
    {{- model_identity + "\n" }}
    {{- "Knowledge cutoff: 2024-06\n" }}
    {{- "Current date: " + strftime_now("%Y-%m-%d") + "\n\n" }}
    {%- if reasoning_effort is not defined %}
        {%- set reasoning_effort = "medium" %}
    {%- endif %}
    {{- "Reasoning: " + reasoning_effort + "\n\n" }}
    {%- if builtin_tools %}
        {{- "# Tools\n\n" }}
        {%- set available_builtin_tools = namespace(browser=false, python=false) %}
        {%- for tool in builtin_tools %}
            {%- if tool == "browser" %}
                {%- set available_builtin_tools.browser = true %}
            {%- elif tool == "python" %}
                {%- set available_builtin_tools.python = true %}
            {%- endif %}
        {%- endfor %}
        {{- render_builtin_tools(available_builtin_tools.browser, available_builtin_tools.python) }}
    {%- endif -%}
    {{- "# Valid channels: analysis, commentary, final. Channel must be included for every message." }}
    {%- if tools -%}
        {{- "\nCalls to these tools must go to the commentary channel: 'functions'." }}
    {%- endif -%}
{%- endmacro -%}

{#- Main Template Logic ================================================= #}
{#- Set defaults #}

{#- Render system message #}
{{- "<|start|>system<|message|>" }}
{{- build_system_message() }}
{{- "<|end|>" }}

{#- Extract developer message #}
{%- if messages[0].role == "developer" or messages[0].role == "system" %}
    {%- set developer_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set developer_message = "" %}
    {%- set loop_messages = messages %}
{%- endif %}

{#- Render developer message #}
{%- if developer_message or tools %}
    {{- "<|start|>developer<|message|>" }}
    {%- if developer_message %}
        {{- "# Instructions\n\n" }}
        {{- developer_message }}
        {{- "\n\n" }}
    {%- endif %}
    {%- if tools -%}
        {{- "# Tools\n\n" }}
        {{- render_tool_namespace("functions", tools) }}
    {%- endif -%}
    {{- "<|end|>" }}
{%- endif %}

{#- Render messages #}
{%- set last_tool_call = namespace(name=none) %}
{%- for message in loop_messages -%}
    {#- At this point only assistant/user/tool messages should remain #}
    {%- if message.role == 'assistant' -%}
        {#- Checks to ensure the messages are being passed in the format we expect #}
        {%- if "content" in message %}
            {%- if "<|channel|>analysis<|message|>" in message.content or "<|channel|>final<|message|>" in message.content %}
                {{- raise_exception("You have passed a message containing <|channel|> tags in the content field. Instead of doing this, you should pass analysis messages (the string between '<|message|>' and '<|end|>') in the 'thinking' field, and final messages (the string between '<|message|>' and '<|end|>') in the 'content' field.") }}
            {%- endif %}
        {%- endif %}
        {%- if "thinking" in message %}
            {%- if "<|channel|>analysis<|message|>" in message.thinking or "<|channel|>final<|message|>" in message.thinking %}
                {{- raise_exception("You have passed a message containing <|channel|> tags in the thinking field. Instead of doing this, you should pass analysis messages (the string between '<|message|>' and '<|end|>') in the 'thinking' field, and final messages (the string between '<|message|>' and '<|end|>') in the 'content' field.") }}
            {%- endif %}
        {%- endif %}
        {%- if "tool_calls" in message %}
            {#- We need very careful handling here - we want to drop the tool call analysis message if the model #}
            {#- has output a later <|final|> message, but otherwise we want to retain it. This is the only case #}
            {#- when we render CoT/analysis messages in inference. #}
            {%- set future_final_message = namespace(found=false) %}
            {%- for future_message in loop_messages[loop.index:] %}
                {%- if future_message.role == 'assistant' and "tool_calls" not in future_message %}
                    {%- set future_final_message.found = true %}
                {%- endif %}
            {%- endfor %}
            {#- We assume max 1 tool call per message, and so we infer the tool call name #}
            {#- in "tool" messages from the most recent assistant tool call name #}
            {%- set tool_call = message.tool_calls[0] %}
            {%- if tool_call.function %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {%- if message.content and message.thinking %}
                {{- raise_exception("Cannot pass both content and thinking in an assistant message with tool calls! Put the analysis message in one or the other, but not both.") }}
            {%- elif message.content and not future_final_message.found %}
                {{- "<|start|>assistant<|channel|>analysis<|message|>" + message.content + "<|end|>" }}
            {%- elif message.thinking and not future_final_message.found %}
                {{- "<|start|>assistant<|channel|>analysis<|message|>" + message.thinking + "<|end|>" }}
            {%- endif %}
            {{- "<|start|>assistant to=" }}
            {{- "functions." + tool_call.name + "<|channel|>commentary " }}
            {{- (tool_call.content_type if tool_call.content_type is defined else "json") + "<|message|>" }}
            {{- tool_call.arguments|tojson }}
            {{- "<|call|>" }}
            {%- set last_tool_call.name = tool_call.name %}
        {%- elif loop.last and not add_generation_prompt %}
            {#- Only render the CoT if the final turn is an assistant turn and add_generation_prompt is false #}
            {#- This is a situation that should only occur in training, never in inference. #}
            {%- if "thinking" in message %}
                {{- "<|start|>assistant<|channel|>analysis<|message|>" + message.thinking + "<|end|>" }}
            {%- endif %}
            {#- <|return|> indicates the end of generation, but <|end|> does not #}
            {#- <|return|> should never be an input to the model, but we include it as the final token #}
            {#- when training, so the model learns to emit it. #}
            {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|return|>" }}
        {%- else %}
            {#- CoT is dropped during all previous turns, so we never render it for inference #}
            {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|end|>" }}
            {%- set last_tool_call.name = none %}
        {%- endif %}
    {%- elif message.role == 'tool' -%}
        {%- if last_tool_call.name is none %}
            {{- raise_exception("Message has tool role, but there was no previous assistant message with a tool call!") }}
        {%- endif %}
        {{- "<|start|>functions." + last_tool_call.name }}
        {{- " to=assistant<|channel|>commentary<|message|>" + message.content|tojson + "<|end|>" }}
    {%- elif message.role == 'user' -%}
        {{- "<|start|>user<|message|>" + message.content + "<|end|>" }}
    {%- endif -%}
{%- endfor -%}

{#- Generation prompt #}
{%- if add_generation_prompt -%}
<|start|>assistant
{%- endif -%}'''


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(build_tiny_gptoss(sys.argv[1] if len(sys.argv) > 1 else "tiny-gpt-oss.gguf"))
