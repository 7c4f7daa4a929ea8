"""``quantroute check-vllm-args``: the known vLLM failures are caught, with exit codes 0/1/2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quantroute.cli import main as cli_main
from quantroute.config import GatewayConfig, parse_config
from quantroute.preflight import (
    ArgumentProblem,
    Finding,
    Severity,
    check_vllm_args,
    exit_code,
    parse_vllm_args,
)

AWQ_8B = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
QWEN = "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4"
GOOD = [
    AWQ_8B,
    "--quantization",
    "awq_marlin",
    "--dtype",
    "float16",
    "--max-model-len",
    "8192",
    "--gpu-memory-utilization",
    "0.90",
    "--max-num-seqs",
    "256",
]
GATEWAY_YAML = f"""
backends:
  - id: llama3-8b-awq
    url: http://vllm-llama3-8b-awq:8000
    served_model_name: {AWQ_8B}
    quantization: awq
    max_seq_len: 8192
    capacity: 256
  - id: qwen25-7b-gptq
    url: http://vllm-qwen25-7b-gptq:8000
    served_model_name: {QWEN}
    quantization: gptq
    max_seq_len: 32768
    capacity: 300
"""


def _with(args: list[str], flag: str, value: str | None) -> list[str]:
    """``args`` with ``flag`` set to ``value`` (removed when None)."""
    out = list(args)
    if flag in out:
        at = out.index(flag)
        del out[at : at + 2]
    return out if value is None else [*out, flag, value]


def _config() -> GatewayConfig:
    return parse_config(yaml.safe_load(GATEWAY_YAML))


def _findings(argv: list[str], *, gateway: bool = True) -> list[tuple[Severity, str]]:
    config = _config() if gateway else None
    found = check_vllm_args(parse_vllm_args(argv), config)
    return [(f.severity, f.flag) for f in found if f.severity is not Severity.NOTE]


def test_good_arguments_have_no_finding() -> None:
    assert check_vllm_args(parse_vllm_args(GOOD), _config()) == []


@pytest.mark.parametrize("method", ["awq", "awq_marlin", "gptq", "gptq_marlin"])
@pytest.mark.parametrize("dtype", ["float32", "float"])
def test_quantized_weights_with_float32_are_an_error(method: str, dtype: str) -> None:
    argv = _with(_with(GOOD, "--quantization", method), "--dtype", dtype)
    assert (Severity.ERROR, "--dtype") in _findings(argv)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("awq", Severity.ERROR),
        ("gptq", Severity.ERROR),
        ("awq_marlin", None),
        ("gptq_marlin", None),
    ],
)
def test_bfloat16_fails_only_on_kernels_without_it(method: str, expected: Severity | None) -> None:
    argv = _with(_with(GOOD, "--quantization", method), "--dtype", "bfloat16")
    found = [s for s, flag in _findings(argv) if flag == "--dtype"]
    # Marlin kernels run bfloat16, but the fleet standard is float16: a warning, not an error.
    assert found == [expected or Severity.WARNING]


@pytest.mark.parametrize("dtype", [None, "auto"])
def test_quantized_weights_without_explicit_float16_warn(dtype: str | None) -> None:
    assert _findings(_with(GOOD, "--dtype", dtype)) == [(Severity.WARNING, "--dtype")]


def test_float32_on_unquantized_weights_is_fine() -> None:
    argv = ["meta-llama/Llama-3.1-8B-Instruct", "--dtype", "float32", "--max-model-len", "8192"]
    assert _findings(argv, gateway=False) == []


def test_awq_weights_are_recognised_without_quantization_flag() -> None:
    """vLLM reads the method from the checkpoint: float32 fails all the same."""
    argv = _with(_with(GOOD, "--quantization", None), "--dtype", "float32")
    assert (Severity.ERROR, "--dtype") in _findings(argv)
    assert (Severity.ERROR, "--dtype") in _findings(
        ["some/llama-awq", "--dtype", "float32", "--max-model-len", "8192"], gateway=False
    )


@pytest.mark.parametrize(("value", "expected"), [("0.90", []), ("0.85", []), ("0.95", "warn")])
def test_gpu_memory_utilization_above_090_warns(value: str, expected: object) -> None:
    found = _findings(_with(GOOD, "--gpu-memory-utilization", value))
    assert found == ([(Severity.WARNING, "--gpu-memory-utilization")] if expected else [])


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_gpu_memory_utilization_out_of_range_is_an_error(value: str) -> None:
    found = _findings(_with(GOOD, "--gpu-memory-utilization", value))
    assert found == [(Severity.ERROR, "--gpu-memory-utilization")]


@pytest.mark.parametrize("value", [None, "auto", "-1"])
def test_missing_max_model_len_warns(value: str | None) -> None:
    found = _findings(_with(GOOD, "--max-model-len", value), gateway=False)
    assert found == [(Severity.WARNING, "--max-model-len")]


@pytest.mark.parametrize("value", ["16384", "16k", "16K", "4096"])
def test_max_model_len_different_from_the_gateway_warns(value: str) -> None:
    assert _findings(_with(GOOD, "--max-model-len", value)) == [
        (Severity.WARNING, "--max-model-len")
    ]


@pytest.mark.parametrize("value", ["8192", "8Ki", "8K"])
def test_max_model_len_equal_to_the_gateway_is_fine(value: str) -> None:
    assert _findings(_with(GOOD, "--max-model-len", value)) == []


def test_max_model_len_is_compared_with_the_backend_of_that_model() -> None:
    argv = [
        QWEN,
        "--quantization=gptq_marlin",
        "--dtype=float16",
        "--max-model-len=32768",
        "--gpu-memory-utilization=0.9",
    ]
    assert _findings(argv) == []
    assert _findings(_with(argv, "--max-model-len", "8192")) == [
        (Severity.WARNING, "--max-model-len")
    ]


def test_served_model_name_selects_the_backend() -> None:
    argv = ["/models/llama", "--served-model-name", AWQ_8B, *GOOD[1:]]
    assert _findings(argv) == []
    unknown = ["/models/llama", "--served-model-name", "other", *GOOD[1:]]
    assert _findings(unknown) == [(Severity.WARNING, "--served-model-name")]


def test_explicit_slow_kernel_gets_a_note_only() -> None:
    found = check_vllm_args(parse_vllm_args(_with(GOOD, "--quantization", "awq")), _config())
    assert [(f.severity, f.flag) for f in found] == [(Severity.NOTE, "--quantization")]
    assert exit_code(found) == 0


@pytest.mark.parametrize(
    "prefix",
    [[], ["vllm", "serve"], ["serve"], ["python3", "-m", "vllm.entrypoints.openai.api_server"]],
)
def test_parser_reads_vllm_command_lines(prefix: list[str]) -> None:
    argv = [
        *prefix,
        "--model",
        "m",
        "--served-model-name",
        "a",
        "b",
        "--enforce-eager",
        "-q",
        "awq",
        "--max_model_len=8k",
        "--trust-remote-code",
    ]
    args = parse_vllm_args(argv)
    assert args.model == "m"
    assert args.served_model_names == ("a", "b")
    assert args.options["--quantization"] == "awq"
    assert args.options["--max-model-len"] == "8k"
    assert args.options["--enforce-eager"] == ""


def test_unreadable_number_is_an_argument_problem() -> None:
    with pytest.raises(ArgumentProblem):
        check_vllm_args(parse_vllm_args(_with(GOOD, "--max-model-len", "lots")))
    with pytest.raises(ArgumentProblem):
        check_vllm_args(parse_vllm_args(_with(GOOD, "--gpu-memory-utilization", "most")))


@pytest.mark.parametrize(
    ("severities", "code"),
    [
        ([], 0),
        ([Severity.NOTE], 0),
        ([Severity.WARNING, Severity.NOTE], 1),
        ([Severity.WARNING, Severity.ERROR], 2),
    ],
)
def test_exit_code(severities: list[Severity], code: int) -> None:
    assert exit_code([Finding(s, "--x", "m") for s in severities]) == code


@pytest.fixture
def gateway_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(GATEWAY_YAML)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli_main(["check-vllm-args", *argv])
    return code, capsys.readouterr().out


def test_cli_ok(capsys: pytest.CaptureFixture[str], gateway_file: Path) -> None:
    code, out = _run(capsys, "--gateway-config", str(gateway_file), "--", *GOOD)
    assert code == 0
    assert out.startswith("ok: ")


def test_cli_warnings_exit_1(capsys: pytest.CaptureFixture[str], gateway_file: Path) -> None:
    argv = _with(GOOD, "--gpu-memory-utilization", "0.95")
    code, out = _run(capsys, "--gateway-config", str(gateway_file), "--", *argv)
    assert code == 1
    assert "warning: --gpu-memory-utilization: 0.95 is above 0.90" in out
    assert "0 error(s), 1 warning(s)" in out


def test_cli_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "--", "vllm", "serve", *_with(GOOD, "--dtype", "float32"))
    assert code == 2
    assert "error: --dtype: float32 with AWQ weights" in out
    assert "Use --dtype float16" in out
    assert "vLLM would fail to start" in out
    assert "no gateway config given" in out


def test_cli_bad_gateway_config_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: [{id: x}]\n")
    code, out = _run(capsys, "--gateway-config", str(bad), "--", *GOOD)
    assert code == 2
    assert str(bad) in out


def test_cli_without_arguments_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "--")
    assert code == 2
    assert "no vLLM arguments" in out


def test_fail_on_error_prints_warnings_but_exits_0_and_still_stops_errors(
    capsys: pytest.CaptureFixture[str], gateway_file: Path
) -> None:
    """How the vLLM init container runs it: only what makes vLLM fail keeps the pod from starting."""
    warned = _with(GOOD, "--gpu-memory-utilization", "0.95")
    code, out = _run(
        capsys, "--fail-on", "error", "--gateway-config", str(gateway_file), "--", *warned
    )
    assert code == 0
    assert "warning: --gpu-memory-utilization: 0.95 is above 0.90" in out
    code, out = _run(capsys, "--fail-on", "error", "--", *_with(GOOD, "--dtype", "float32"))
    assert code == 2
    assert "vLLM would fail to start" in out
