"""Pre-flight check of ``vllm serve`` arguments, before a GPU is spent on a server that will fail.

It catches the failures our users met in production (see ``deploy/README.md``):

- AWQ/GPTQ weights with a float32 (or, for the non-Marlin kernels, bfloat16) dtype: vLLM refuses
  to start. An error.
- ``--gpu-memory-utilization`` above 0.90: out-of-memory kills with "free" memory under long
  contexts. A warning.
- no ``--max-model-len``: vLLM sizes the server for the model's full context (128k for Llama 3.1),
  and one huge request starves the scheduler. A warning.
- ``--max-model-len`` different from the gateway config's ``max_seq_len`` for the backend that
  serves this model: above it, KV cache is reserved for prompts the gateway never sends; below it,
  the gateway routes prompts that vLLM rejects with 400. A warning.

Exit codes of :func:`check_vllm_args_main`: 0 nothing found; 1 warnings only; 2 at least one
error, or the check could not run (no arguments, unreadable gateway config, a value vLLM would not
parse). Notes (hints such as a faster kernel) never change the exit code. With
``--fail-on error`` (how the vLLM pods' init container runs it) warnings exit 0 as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from quantroute.config import BackendConfig, GatewayConfig, Quantization, load_config
from quantroute.errors import ConfigError

GPU_MEMORY_UTILIZATION_LIMIT = 0.90

# vLLM's quantization methods for AWQ and GPTQ weights, and the activation dtypes each kernel runs.
_KERNEL_DTYPES: dict[str, frozenset[str]] = {
    "awq": frozenset({"float16"}),
    "gptq": frozenset({"float16"}),
    "marlin": frozenset({"float16"}),
    "awq_marlin": frozenset({"float16", "bfloat16"}),
    "gptq_marlin": frozenset({"float16", "bfloat16"}),
}
_DTYPE_ALIASES = {"half": "float16", "float": "float32"}
_SHORT_FLAGS = {"-q": "--quantization"}
# Flags of vllm serve that take no value; any other flag takes the next token as its value.
_BOOLEAN_FLAGS = frozenset(
    {
        "--enforce-eager",
        "--trust-remote-code",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
        "--enable-chunked-prefill",
        "--no-enable-chunked-prefill",
        "--enable-auto-tool-choice",
        "--enable-lora",
        "--disable-log-stats",
        "--disable-log-requests",
        "--enable-log-requests",
        "--disable-custom-all-reduce",
        "--disable-frontend-multiprocessing",
        "--headless",
    }
)
_HUMAN_SUFFIXES = {"k": 10**3, "K": 2**10, "Ki": 2**10, "m": 10**6, "M": 10**6, "Mi": 2**20}
_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)(k|Ki|K|m|Mi|M)?")
_FLAG = re.compile(r"^(--[A-Za-z]|-[A-Za-z]$)")


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    flag: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.flag}: {self.message}"


@dataclass(frozen=True)
class VllmArgs:
    """What the check needs from a ``vllm serve`` command line (flag names with dashes)."""

    model: str | None = None
    served_model_names: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The model names clients use: the served names, else the model."""
        if self.served_model_names:
            return self.served_model_names
        return (self.model,) if self.model else ()


class ArgumentProblem(ValueError):
    """A value in the vLLM arguments that vLLM itself would refuse to parse."""


def _is_flag(token: str) -> bool:
    return bool(_FLAG.match(token))


def _canonical(flag: str) -> str:
    flag = _SHORT_FLAGS.get(flag, flag)
    return "--" + flag[2:].replace("_", "-")


def _strip_program(argv: Sequence[str]) -> list[str]:
    """Drop a leading ``vllm serve`` or ``python -m vllm.entrypoints.openai.api_server``."""
    tokens = list(argv)
    if tokens[:1] == ["--"]:
        tokens = tokens[1:]
    if "-m" in tokens[:3]:
        at = tokens.index("-m")
        if at + 1 < len(tokens) and tokens[at + 1].startswith("vllm"):
            return tokens[at + 2 :]
    if tokens[:2] == ["vllm", "serve"]:
        return tokens[2:]
    return tokens[1:] if tokens[:1] == ["serve"] else tokens


def parse_vllm_args(argv: Sequence[str]) -> VllmArgs:
    """Read the flags the check uses; a later flag wins, as in argparse."""
    tokens = _strip_program(argv)
    model: str | None = None
    served: list[str] = []
    options: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not _is_flag(token):
            model = model or token
            continue
        name, has_value, value = token.partition("=")
        name = _canonical(name)
        if name == "--served-model-name":
            served = [value] if has_value else []
            while not has_value and i < len(tokens) and not _is_flag(tokens[i]):
                served.append(tokens[i])
                i += 1
            continue
        takes_value = not has_value and name not in _BOOLEAN_FLAGS
        if takes_value and i < len(tokens) and not _is_flag(tokens[i]):
            value = tokens[i]
            i += 1
        options[name] = value
    model = options.get("--model", model)
    return VllmArgs(model=model, served_model_names=tuple(served), options=options)


def parse_human_int(flag: str, text: str) -> int:
    """An integer as vLLM reads it: ``8192``, ``8k`` (8000), ``8K``/``8Ki`` (8192)."""
    if text.strip() == "-1":
        return -1
    match = _HUMAN_INT.fullmatch(text.strip())
    if not match:
        raise ArgumentProblem(f"{flag} {text!r} is not an integer")
    number, suffix = match.groups()
    if suffix is None:
        if "." in number:
            raise ArgumentProblem(f"{flag} {text!r} is not an integer")
        return int(number)
    return int(float(number) * _HUMAN_SUFFIXES[suffix])


def backends_for(config: GatewayConfig, args: VllmArgs) -> tuple[BackendConfig, ...]:
    """The gateway backends whose served model name is one this server answers to."""
    names = set(args.names)
    return tuple(b for b in config.backends if b.served_model_name in names)


def _quantization(args: VllmArgs, backends: Sequence[BackendConfig]) -> tuple[str | None, str]:
    """The quantization method in effect and where it came from (vLLM reads it from the weights)."""
    explicit = args.options.get("--quantization")
    if explicit:
        return explicit.lower(), "--quantization " + explicit
    for backend in backends:
        if backend.quantization in (Quantization.AWQ, Quantization.GPTQ):
            return backend.quantization.value, f"gateway backend {backend.id!r} says quantization"
    for name in (args.model or "", *args.names):
        for method in ("awq", "gptq"):
            if method in name.lower():
                return method, f"the model name {name!r} names {method.upper()} weights"
    return None, ""


def check_dtype(args: VllmArgs, backends: Sequence[BackendConfig]) -> Iterator[Finding]:
    method, source = _quantization(args, backends)
    if method not in _KERNEL_DTYPES:
        return
    raw = args.options.get("--dtype", "auto")
    dtype = _DTYPE_ALIASES.get(raw.lower(), raw.lower())
    family = method.split("_")[0].upper()
    if dtype == "float32" or (dtype == "bfloat16" and dtype not in _KERNEL_DTYPES[method]):
        yield Finding(
            Severity.ERROR,
            "--dtype",
            f"{raw} with {family} weights ({source}): vLLM's {method} kernel runs only "
            f"{' or '.join(sorted(_KERNEL_DTYPES[method]))} and refuses to start. "
            "Use --dtype float16.",
        )
    elif dtype != "float16":
        yield Finding(
            Severity.WARNING,
            "--dtype",
            f"{raw} with {family} weights ({source}): the dtype then depends on the checkpoint "
            "and the vLLM version. Pass --dtype float16 explicitly.",
        )
    if method in ("awq", "gptq"):
        yield Finding(
            Severity.NOTE,
            "--quantization",
            f"{method} forces vLLM's slow {family} kernel; on GPUs of compute capability 8.0 "
            f"or newer (A100, L40S, H100) --quantization {method}_marlin is several times faster.",
        )


def check_gpu_memory(args: VllmArgs) -> Iterator[Finding]:
    raw = args.options.get("--gpu-memory-utilization")
    if raw is None:
        return
    try:
        value = float(raw)
    except ValueError:
        raise ArgumentProblem(f"--gpu-memory-utilization {raw!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        yield Finding(
            Severity.ERROR,
            "--gpu-memory-utilization",
            f"{raw} is outside (0, 1]: it is the fraction of GPU memory vLLM may use.",
        )
    elif value > GPU_MEMORY_UTILIZATION_LIMIT:
        yield Finding(
            Severity.WARNING,
            "--gpu-memory-utilization",
            f"{raw} is above {GPU_MEMORY_UTILIZATION_LIMIT:.2f}: too little memory is left for "
            "activations and CUDA graphs, and long contexts end in out-of-memory kills while "
            f"the KV cache still shows free blocks. Use {GPU_MEMORY_UTILIZATION_LIMIT:.2f}.",
        )


def check_max_model_len(
    args: VllmArgs, config: GatewayConfig | None, backends: Sequence[BackendConfig]
) -> Iterator[Finding]:
    raw = args.options.get("--max-model-len")
    length = None if raw is None or raw == "auto" else parse_human_int("--max-model-len", raw)
    if length is None or length < 0:
        shown = "not set" if raw is None else f"{raw} lets vLLM choose"
        yield Finding(
            Severity.WARNING,
            "--max-model-len",
            f"{shown}: vLLM then sizes the server for the model's whole context window "
            "(128k tokens for Llama 3.1), and one very long request can starve the scheduler. "
            "Set it to what your use case needs (8192 for our Llama variants).",
        )
    if config is None:
        return
    if not backends:
        yield Finding(
            Severity.WARNING,
            "--served-model-name",
            f"no backend in the gateway config serves {' or '.join(args.names) or '(no model)'}; "
            "the gateway will not route to this server, and --max-model-len was not compared.",
        )
        return
    for backend in backends:
        if length is not None and length >= 0:
            yield from _compare_length(length, backend)


def _compare_length(length: int, backend: BackendConfig) -> Iterator[Finding]:
    limit = backend.max_seq_len
    if length > limit:
        yield Finding(
            Severity.WARNING,
            "--max-model-len",
            f"{length} is above max_seq_len {limit} of gateway backend {backend.id!r}: the "
            f"gateway never sends more than {limit} tokens, so vLLM reserves memory for "
            f"requests that never come. Use --max-model-len {limit} or raise max_seq_len.",
        )
    elif length < limit:
        yield Finding(
            Severity.WARNING,
            "--max-model-len",
            f"{length} is below max_seq_len {limit} of gateway backend {backend.id!r}: the "
            f"gateway will send prompts of up to {limit} tokens that vLLM rejects with 400. "
            f"Use --max-model-len {limit} or lower max_seq_len.",
        )


def check_vllm_args(args: VllmArgs, config: GatewayConfig | None = None) -> list[Finding]:
    """Every finding for these arguments; raises :class:`ArgumentProblem` on an unreadable value."""
    backends = backends_for(config, args) if config is not None else ()
    findings = [
        *check_dtype(args, backends),
        *check_gpu_memory(args),
        *check_max_model_len(args, config, backends),
    ]
    order = list(Severity)
    return sorted(findings, key=lambda f: order.index(f.severity))


def exit_code(findings: Sequence[Finding]) -> int:
    severities = {f.severity for f in findings}
    if Severity.ERROR in severities:
        return 2
    return 1 if Severity.WARNING in severities else 0


def _summary(args: VllmArgs, findings: Sequence[Finding]) -> str:
    errors = sum(f.severity is Severity.ERROR for f in findings)
    warnings = sum(f.severity is Severity.WARNING for f in findings)
    subject = " / ".join(args.names) or "(no model given)"
    if not errors and not warnings:
        return f"ok: the vLLM arguments for {subject} avoid every known failure"
    verdict = "vLLM would fail to start" if errors else "vLLM would start, but see above"
    return f"{subject}: {errors} error(s), {warnings} warning(s): {verdict}"


def check_vllm_args_main(
    argv: list[str], gateway_config: str | None, fail_on: str = "warning"
) -> int:
    """``quantroute check-vllm-args [--gateway-config FILE] [--fail-on error] -- <vllm args>``.

    ``fail_on="error"`` (the init container's setting) exits 0 on warnings: they are printed, but
    only what makes vLLM fail to start keeps a GPU server from starting.
    """
    if not argv:
        print("error: no vLLM arguments given; usage: check-vllm-args -- <vllm serve args>")
        return 2
    try:
        config = load_config(gateway_config) if gateway_config else None
        args = parse_vllm_args(argv)
        findings = check_vllm_args(args, config)
    except (ConfigError, ArgumentProblem) as exc:
        print(f"error: {exc}")
        return 2
    for finding in findings:
        print(finding)
    if config is None:
        print("note: no gateway config given, so --max-model-len was not compared with it")
    print(_summary(args, findings))
    code = exit_code(findings)
    return 0 if fail_on == "error" and code == 1 else code
