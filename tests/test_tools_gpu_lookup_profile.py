"""tools/gpu_lookup_profile.py: its readers of XLA dumps on GPU-shaped HLO and PTX snippets, and a
whole run at the smoke size on this CPU (what it writes parses)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "gpu_lookup_profile.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("gpu_lookup_profile", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # importing it does not import jax
    return mod


HLO = """HloModule jit__train_step, entry_computation_layout={(f32[90000,48]{1,0})->f32[90000,48]{1,0}}

%add.clone (x.1: f32[], y.1: f32[]) -> f32[] {
  %x.1 = f32[] parameter(0)
  %y.1 = f32[] parameter(1)
  ROOT %add.2 = f32[] add(%x.1, %y.1)
}

%fused_computation.5 (param_0.10: f32[90000,48], param_1.20: s32[4000000,1], param_2.30: f32[4000000,48]) -> f32[90000,48] {
  %param_0.10 = f32[90000,48]{1,0} parameter(0)
  %param_1.20 = s32[4000000,1]{1,0} parameter(1)
  %param_2.30 = f32[4000000,48]{1,0} parameter(2)
  ROOT %scatter.1 = f32[90000,48]{1,0} scatter(%param_0.10, %param_1.20, %param_2.30), update_window_dims={1}, inserted_window_dims={0}, scatter_dims_to_operand_dims={0}, index_vector_dim=1, to_apply=%add.clone, metadata={op_name="jit(_train_step)/transpose(jvp(gather))/scatter-add"}
}

ENTRY %main.9 (Arg_0.1: f32[90000,48], Arg_1.2: s32[4000000,1], Arg_2.3: f32[4000000,48], Arg_3.4: bf16[300,48], Arg_4.5: s32[1000,1], Arg_5.6: bf16[1000,48]) -> f32[90000,48] {
  %Arg_0.1 = f32[90000,48]{1,0} parameter(0)
  %Arg_1.2 = s32[4000000,1]{1,0} parameter(1)
  %Arg_2.3 = f32[4000000,48]{1,0} parameter(2)
  %Arg_3.4 = bf16[300,48]{1,0} parameter(3)
  %Arg_4.5 = s32[1000,1]{1,0} parameter(4)
  %Arg_5.6 = bf16[1000,48]{1,0} parameter(5)
  %scatter.7 = bf16[300,48]{1,0} scatter(%Arg_3.4, %Arg_4.5, %Arg_5.6), update_window_dims={1}, inserted_window_dims={0}, scatter_dims_to_operand_dims={0}, index_vector_dim=1, to_apply=%add.clone
  ROOT %input_scatter_fusion.2 = f32[90000,48]{1,0} fusion(%Arg_0.1, %Arg_1.2, %Arg_2.3), kind=kInput, calls=%fused_computation.5
}
"""

PTX = """//
.version 8.4
.target sm_90
.visible .entry input_scatter_fusion_2(
	.param .u64 input_scatter_fusion_2_param_0
)
{
	ld.global.nc.f32 	%f1, [%rd3];
	red.global.add.f32 	[%rd5], %f1;
	@%p1 atom.global.add.f32 	%f2, [%rd6], %f3;
	ret;
}
.visible .entry scatter_7(
	.param .u64 scatter_7_param_0
)
{
$L__BB1_1:
	atom.global.cas.b32 	%r5, [%rd2], %r3, %r4;
	@!%p2 bra 	$L__BB1_1;
	ret;
}
.visible .entry loop_add_fusion(
)
{
	add.f32 	%f3, %f1, %f2;
}
"""


@pytest.mark.parametrize("percent", [True, False], ids=["names-with-%", "names-without-%"])
def test_scatter_fusions_of_an_optimized_module(tool, percent):
    text = HLO if percent else HLO.replace("%", "")
    got = {f["name"]: f for f in tool.scatter_fusions(text)}
    assert set(got) == {"input_scatter_fusion.2", "scatter.7"}
    fused, bare = got["input_scatter_fusion.2"], got["scatter.7"]
    assert fused["fusion_kind"] == "kInput" and fused["dtype"] == "f32" and fused["shape"] == "f32[90000,48]"
    assert fused["operands"] == ["f32[90000,48]", "s32[4000000,1]", "f32[4000000,48]"]
    assert fused["update_window_dims"] == [1] and fused["inserted_window_dims"] == [0]
    assert fused["op_name"] == "jit(_train_step)/transpose(jvp(gather))/scatter-add"
    assert bare["fusion_kind"] is None and bare["dtype"] == "bf16" and bare["computation"] == "main.9"


def test_ptx_atomics_tell_native_adds_from_compare_and_swap_loops(tool):
    atomics = tool.ptx_atomics(PTX)
    assert atomics == {
        "input_scatter_fusion_2": {"red.global.add.f32": 1, "atom.global.add.f32": 1},
        "scatter_7": {"atom.global.cas.b32": 1},
        "loop_add_fusion": {},
    }
    fusions = tool.scatter_fusions(HLO)
    tool.attach_atomics(fusions, atomics)
    kinds = {f["name"]: (f["atomic_kind"], f["ptx_kernels"]) for f in fusions}
    assert kinds == {"input_scatter_fusion.2": ("native-f32", ["input_scatter_fusion_2"]), "scatter.7": ("cas-loop", ["scatter_7"])}
    assert tool.atomic_kind({"red.global.add.noftz.bf16x2": 2}) == "native-16bit"
    assert tool.atomic_kind({"atom.global.cas.b32": 1, "red.global.add.f32": 3}) == "cas-loop+native-f32"


def test_a_smoke_run_on_the_cpu_writes_what_it_promises(tmp_path):
    """One train-step case and one lookup variant at the smoke size: the JSON parses and holds the
    case (a step time, float32 scatter fusions from the dumped HLO, a CPU profile), the lookup
    timings, the markdown tables and a dump archive with the step's optimized HLO."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, str(TOOL), str(out), "--size", "smoke", "--cases", "flat:fp32", "--steps", "1",
           "--profile-steps", "1", "--lookup-variants", "vjp", "--lookup-dtypes", "fp32", "--lookup-rounds", "1",
           "--keep-dumps", "1", "--dump-dir", str(tmp_path / "dump")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "lookup_profile.json").read_text())
    assert f"--xla_dump_to={tmp_path / 'dump'}" in result["xla_flags"] and result["device"] == "cpu"
    (case,) = result["cases"]
    assert "error" not in case, case.get("error")
    assert case["variant"] == "flat" and case["step_ms"] > 0 and case["compile_s"] > 0
    assert case["scatter_fusions"] and {f["dtype"] for f in case["scatter_fusions"]} == {"f32"}
    assert case["profile"]["source"] == "/host:CPU (tf_XLA lines)" and case["profile"]["ops_ms_per_step"] > 0
    assert len(result["lookups"]) == 4  # plane and line, forward and forward+backward
    assert all(r["variant"] == "vjp" and r["ms"] > 0 for r in result["lookups"])
    md = (out / "lookup_profile.md").read_text()
    assert "| flat | fp32 |" in md and "| line | fp32 | vjp |" in md
    with tarfile.open(out / "dumps.tgz") as tar:
        names = tar.getnames()
    assert any(n.endswith("after_optimizations.txt") for n in names) and set(names) <= set(case["module_files"])
    assert sorted(p.name for p in out.iterdir()) == ["dumps.tgz", "lookup_profile.json", "lookup_profile.md"]
