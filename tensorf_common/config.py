"""Frozen dataclass configs: the one source of truth for defaults.

Both frameworks (``jax_tensorf`` and ``torch_reference``), the benchmarks and the CLI read their
settings from these dataclasses. Each field carries its documentation as a docstring, which tyro
turns into ``--help`` text. Defaults follow the official TensoRF code (``configs/lego.txt``,
``TensorVMSplit``) unless a field says otherwise.

Nothing here is a fact about one scene: bounds come from the dataset (or are carved from the
training views' alpha), grid sizes from voxel counts and the box.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Optional

from .geometry import BLENDER_NEAR_FAR

ModelKind = Literal["VM", "CP"]
ShadingMode = Literal["MLP_Fea", "MLP_PE", "MLP", "SH", "RGB"]
AppearanceStrategy = Literal["all", "threshold", "topk", "sample"]
VmapVariant = Literal["flat", "pairs", "rays", "samples", "gather", "vjp", "sorted", "pallas"]
DensityActivation = Literal["softplus", "relu"]
ScheduleUnit = Literal["iter", "fraction"]
OptimizerOnUpsample = Literal["recreate", "resize"]
BoxSource = Literal["dataset", "carve"]
Precision = Literal["fp32", "bf16", "fp16"]


class ConfigError(ValueError):
    """An impossible or inconsistent option. The message names the field."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class FieldConfig:
    """The radiance field: tensor decomposition, density activation and appearance decoder."""

    model: ModelKind = "VM"
    """Tensor decomposition: VM (TensorVMSplit: 3 planes + 3 lines per component group) or CP (lines only)."""
    density_n_comp: tuple[int, ...] = (16, 16, 16)
    """Density components per plane/line pair (VM: three numbers); CP uses the first as its rank."""
    app_n_comp: tuple[int, ...] = (48, 48, 48)
    """Appearance components per plane/line pair (VM: three numbers); CP uses the first as its rank."""
    app_dim: int = 27
    """Width of the appearance feature after the basis matrix (SH needs 27, RGB needs 3)."""
    density_shift: float = -10.0
    """Added to the density feature before the softplus activation (official: -10)."""
    fea2dense_act: DensityActivation = "softplus"
    """Density activation: softplus(f + shift) or relu(f)."""
    distance_scale: float = 25.0
    """Sample spacing is multiplied by this before alpha = 1 - exp(-sigma * dist) (official: 25)."""
    shading_mode: ShadingMode = "MLP_Fea"
    """Appearance decoder: MLP_Fea (default), MLP_PE, MLP, SH (degree 2) or RGB."""
    pos_pe: int = 6
    """Positional-encoding frequencies of the normalised position (MLP_PE only)."""
    view_pe: int = 2
    """Positional-encoding frequencies of the view direction (MLP decoders)."""
    fea_pe: int = 2
    """Positional-encoding frequencies of the appearance feature (MLP_Fea)."""
    feature_c: int = 128
    """Hidden width of the MLP decoders."""
    init_scale: Optional[float] = None
    """Std of the normal initialisation of planes/lines; None = official (0.1 for VM, 0.2 for CP)."""

    def __post_init__(self) -> None:
        n = 3 if self.model == "VM" else 1
        _require(self.model in ("VM", "CP"), f"field.model: expected VM or CP, got {self.model!r}")
        for name in ("density_n_comp", "app_n_comp"):
            comps = getattr(self, name)
            _require(
                len(comps) >= n and all(int(c) > 0 for c in comps),
                f"field.{name}: need {n} positive component counts for {self.model}, got {tuple(comps)}",
            )
        _require(self.app_dim > 0, f"field.app_dim: must be positive, got {self.app_dim}")
        if self.shading_mode == "SH":
            _require(self.app_dim == 27, f"field.app_dim: SH shading needs 27, got {self.app_dim}")
        if self.shading_mode == "RGB":
            _require(self.app_dim == 3, f"field.app_dim: RGB shading needs 3, got {self.app_dim}")
        _require(self.distance_scale > 0, f"field.distance_scale: must be positive, got {self.distance_scale}")
        _require(self.feature_c > 0, f"field.feature_c: must be positive, got {self.feature_c}")
        for name in ("pos_pe", "view_pe", "fea_pe"):
            _require(getattr(self, name) >= 0, f"field.{name}: must be >= 0, got {getattr(self, name)}")

    @property
    def resolved_init_scale(self) -> float:
        if self.init_scale is not None:
            return self.init_scale
        return 0.1 if self.model == "VM" else 0.2

    @property
    def density_components(self) -> tuple[int, ...]:
        return tuple(self.density_n_comp[:3]) if self.model == "VM" else (self.density_n_comp[0],)

    @property
    def app_components(self) -> tuple[int, ...]:
        return tuple(self.app_n_comp[:3]) if self.model == "VM" else (self.app_n_comp[0],)


@dataclass(frozen=True)
class RenderConfig:
    """Sampling along rays, compositing, and which samples get appearance."""

    step_ratio: float = 0.5
    """Sample step as a fraction of the mean voxel size (official: 0.5, half a voxel)."""
    max_samples: int = 1_000_000
    """Upper bound on samples per ray (official cap)."""
    ray_march_weight_thres: float = 1e-4
    """Samples whose compositing weight is at or below this get no appearance (official 1e-4)."""
    alpha_mask_thres: float = 1e-4
    """Alpha-mask threshold on 1 - exp(-sigma * step) of the dilated grid (official 1e-4)."""
    appearance: AppearanceStrategy = "threshold"
    """Which samples get appearance: all; threshold (official weight > thres, fixed shapes);
    topk (the k largest weights per ray); sample (the seed's weighted sampling without replacement)."""
    topk: int = 32
    """k for the topk and sample strategies (samples per ray that get appearance)."""
    app_capacity: Optional[float] = None
    """threshold only: compact the selected samples to this fraction of all samples of the batch
    (fixed shape, fewer appearance evaluations; overflow is counted). None = mask in place."""
    eval_appearance: AppearanceStrategy = "threshold"
    """Appearance strategy when rendering whole views for evaluation (official: threshold), so that
    models trained with different strategies are evaluated by the same renderer."""
    sample_capacity: Optional[float] = None
    """Compact the valid samples (inside the box and the alpha mask) to this fraction of all samples
    of the batch before the density lookup (overflow is counted). None = evaluate every sample."""
    vmap_variant: VmapVariant = "flat"
    """How the grid lookup is vectorised: flat (the point function vmapped over flattened points),
    pairs (an outer vmap over the three plane/line pairs), rays (the seed's extra inner vmap over
    rays), samples (inner vmap over samples), gather (no vmap: corners computed once per point,
    then plain gathers); and lookups with a backward of their own that accumulates the grids'
    gradients in float32, one contiguous row per corner: vjp (one scatter-add), sorted (sorted
    segment sums), pallas (Pallas kernels with atomic adds; interpret mode off a GPU, for tests)."""
    density_lookup: Literal["factored", "dense"] = "factored"
    """How density is looked up: factored (the planes and lines at every sample, as the official
    code) or dense (the component products summed into one scalar grid per step, then a trilinear
    lookup: the same values up to rounding, 8 scalar gathers per sample instead of 18 rows of
    components, and a backward pass that scatters 8 values per sample). JAX only."""
    chunk: Optional[int] = None
    """Rays per chunk when rendering whole images; None = JAX: a power of two sized from the device's
    free memory (``jax_tensorf.eval_render``), torch: the official 4096."""
    n_samples_eval: Optional[int] = None
    """Samples per ray at evaluation; None = the model's own count from the box and grid (official)."""
    depth: Literal["mean", "median"] = "mean"
    """Depth output: expected distance (official) or median distance."""

    def __post_init__(self) -> None:
        _require(0 < self.step_ratio <= 4, f"render.step_ratio: expected (0, 4], got {self.step_ratio}")
        _require(self.max_samples > 1, f"render.max_samples: must be > 1, got {self.max_samples}")
        _require(self.topk > 0, f"render.topk: must be positive, got {self.topk}")
        for name in ("app_capacity", "sample_capacity"):
            v = getattr(self, name)
            _require(v is None or 0 < v <= 1, f"render.{name}: expected a fraction in (0, 1] or None, got {v}")
        _require(self.chunk is None or self.chunk > 0, f"render.chunk: must be positive or None, got {self.chunk}")
        _require(
            self.eval_appearance in ("all", "threshold", "topk"),
            f"render.eval_appearance: expected all, threshold or topk, got {self.eval_appearance!r}",
        )
        _require(
            self.app_capacity is None or self.appearance == "threshold",
            f"render.app_capacity: only applies to appearance='threshold', not {self.appearance!r}",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedules and regularisers (official lego values by default)."""

    batch_size: int = 4096
    """Rays per training step."""
    n_iters: int = 30000
    """Training iterations (an upper bound when --minutes is given)."""
    minutes: Optional[float] = None
    """Wall-clock training budget in minutes (set-up and compilation count, the final evaluation does not);
    None = n_iters."""
    schedule_unit: ScheduleUnit = "iter"
    """How upsample_at / alpha_mask_at are read: iteration numbers, or fractions (with --minutes: of
    the seconds of training the run will have, a clock that set-up, compilation and mask updates do
    not advance; else of n_iters)."""
    min_upsample_gap: float = 0.05
    """With a time-fraction schedule: the least spacing of two upsamples, as a fraction of the budget
    (in seconds of training), so that a stall cannot bunch upsamples together."""
    upsample_at: tuple[float, ...] = (2000, 3000, 4000, 5500, 7000)
    """When the grid is upsampled (see schedule_unit)."""
    alpha_mask_at: tuple[float, ...] = (2000, 4000)
    """When the alpha mask is rebuilt (first: shrink the box; second: filter rays by the mask)."""
    n_voxel_init: int = 128**3 + 4
    """Initial voxel count (official 128^3 + 4, to avoid rounding down to 127)."""
    n_voxel_final: int = 300**3
    """Final voxel count; intermediate counts are linear in log space."""
    lr_init: float = 0.02
    """Learning rate of the planes and lines."""
    lr_basis: float = 1e-3
    """Learning rate of the basis matrix and the render MLP."""
    lr_decay_iters: int = -1
    """Iterations over which the LR decays by lr_decay_target_ratio; -1 = n_iters (or the budget)."""
    lr_decay_target_ratio: float = 0.1
    """LR multiplier reached after lr_decay_iters."""
    lr_upsample_reset: bool = True
    """Reset the learning rates to their initial values at every upsample (official)."""
    optimizer_on_upsample: OptimizerOnUpsample = "recreate"
    """At an upsample: recreate Adam (official, moments reset) or resize its moments like the grids (seed)."""
    adam_betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (official)."""
    adam_eps: float = 1e-8
    """Adam epsilon (torch default)."""
    l1_weight_initial: float = 8e-5
    """Density L1 weight before the first alpha-mask update."""
    l1_weight_rest: float = 4e-5
    """Density L1 weight after the first alpha-mask update."""
    ortho_weight: float = 0.0
    """Weight of the orthogonality regulariser on the lines."""
    tv_weight_density: float = 0.0
    """TV weight on the density planes (decays with the LR, official)."""
    tv_weight_app: float = 0.0
    """TV weight on the appearance planes (decays with the LR, official)."""
    mask_max_voxels: int = 256**3
    """The alpha mask is rebuilt at the current grid size only while that has fewer voxels than this."""
    box: BoxSource = "dataset"
    """Initial box: the dataset's bounds, or carved from the training views' alpha (visual hull)."""
    carve_resolution: int = 128
    """Voxels per side of the visual-hull grid used when box='carve'."""
    carve_as_mask: bool = False
    """With box='carve': also use the visual hull as the alpha mask until the first mask update."""
    ray_filter: bool = True
    """Drop training rays that miss the box (at start) and the alpha mask (at the second update)."""
    ray_filter_mask: bool = True
    """With ray_filter: also drop, at the second alpha-mask update, the rays that miss the mask
    (official; it marches every training ray, which costs tens of seconds on a CPU)."""
    seed: int = 20211202
    """Seed of the initialisation, the batch order and the jitter (official value)."""
    log_every: int = 100
    """Host-side logging interval in iterations (the only host syncs of the loop)."""
    checkpoint_every: int = 0
    """Write a checkpoint every N iterations (0: none by count; see checkpoint_minutes)."""
    checkpoint_minutes: float = 5.0
    """Write RUN_DIR/checkpoint.npz (atomically) every this many minutes of wall-clock time, so that a
    killed run can be resumed; it is also written on Ctrl-C and at the end (0: only then). The
    writes count against the budget, not as training time."""
    precision: Precision = "fp32"
    """Compute precision of grid lookups, feature products and the MLP (parameters stay fp32)."""
    precision_parts: tuple[str, ...] = ("features", "mlp")
    """Which parts compute in the reduced precision: grid (16-bit copies of the grids are looked
    up: half the bytes gathered, but the XLA lookups' backward then scatter-adds in 16 bits, which
    NVIDIA GPUs run as compare-and-swap loops), features (products, basis), mlp (the render MLP).
    Without grid, lookups gather float32 and cast their results after the gather, so the grids'
    gradients are always accumulated in float32. Compositing and the loss always run in fp32."""
    loss_scale: Literal["auto", "dynamic", "none"] = "auto"
    """Loss scaling: auto = dynamic for fp16 (flax DynamicScale: skip non-finite steps, adapt the
    scale), none for bf16 and fp32."""
    devices: int = 1
    """Data-parallel devices (jax.sharding mesh over the batch axis; parameters replicated)."""
    static_shapes: bool = False
    """JAX: allocate the planes, lines and alpha mask at their largest size for the whole run, with
    the active grid size a traced value, so that the train step compiles once per run (upsamples
    and shrinks resample into the same buffers). Costs memory and per-step work while the grid is
    small; pays where compilation is slow (GPUs)."""

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, f"train.batch_size: must be positive, got {self.batch_size}")
        _require(self.n_iters > 0, f"train.n_iters: must be positive, got {self.n_iters}")
        _require(
            self.minutes is None or self.minutes > 0, f"train.minutes: must be positive, got {self.minutes}"
        )
        _require(self.n_voxel_init >= 8, f"train.n_voxel_init: too small ({self.n_voxel_init})")
        _require(
            self.n_voxel_final >= self.n_voxel_init,
            f"train.n_voxel_final: {self.n_voxel_final} is below n_voxel_init {self.n_voxel_init}",
        )
        for name in ("upsample_at", "alpha_mask_at"):
            pts = getattr(self, name)
            _require(list(pts) == sorted(pts), f"train.{name}: must be increasing, got {tuple(pts)}")
            _require(all(p >= 0 for p in pts), f"train.{name}: must be >= 0, got {tuple(pts)}")
            if self.schedule_unit == "fraction":
                _require(all(p <= 1 for p in pts), f"train.{name}: fractions must be <= 1, got {tuple(pts)}")
        _require(self.lr_init > 0 and self.lr_basis > 0, "train.lr_init/lr_basis: must be positive")
        _require(
            0 < self.lr_decay_target_ratio <= 1,
            f"train.lr_decay_target_ratio: expected (0, 1], got {self.lr_decay_target_ratio}",
        )
        _require(self.carve_resolution >= 8, f"train.carve_resolution: too small ({self.carve_resolution})")
        _require(self.log_every > 0, f"train.log_every: must be positive, got {self.log_every}")
        _require(self.checkpoint_every >= 0, f"train.checkpoint_every: must be >= 0, got {self.checkpoint_every}")
        _require(
            self.checkpoint_minutes >= 0, f"train.checkpoint_minutes: must be >= 0, got {self.checkpoint_minutes}"
        )
        _require(self.devices >= 1, f"train.devices: must be >= 1, got {self.devices}")
        _require(
            0 <= self.min_upsample_gap < 1,
            f"train.min_upsample_gap: expected a fraction in [0, 1), got {self.min_upsample_gap}",
        )
        _require(
            self.batch_size % self.devices == 0,
            f"train.batch_size: {self.batch_size} is not divisible by train.devices {self.devices}",
        )
        bad = set(self.precision_parts) - {"grid", "features", "mlp"}
        _require(not bad, f"train.precision_parts: unknown parts {sorted(bad)}; choose grid, features, mlp")

    def voxel_schedule(self) -> list[int]:
        """Voxel counts after each upsample: linear in log space (official ``N_voxel_list``)."""
        n = len(self.upsample_at)
        if n == 0:
            return []
        lo, hi = math.log(self.n_voxel_init), math.log(self.n_voxel_final)
        return [int(round(math.exp(lo + (hi - lo) * (i + 1) / n))) for i in range(n)]


@dataclass(frozen=True)
class DataConfig:
    """How a Blender-format dataset is read."""

    downsample: int = 1
    """Integer downsample factor (area averaging); must divide the image size."""
    white_bg: bool = True
    """Composite RGBA on white (Blender scenes)."""
    near_far: Optional[tuple[float, float]] = None
    """Near/far distances along rays; None = the Blender default (2, 6)."""
    aabb: Optional[tuple[float, float, float, float, float, float]] = None
    """Scene box (xmin, ymin, zmin, xmax, ymax, zmax); None = the Blender default +-1.5."""
    test_stride: int = 1
    """Evaluate every n-th test view (official: 1)."""
    max_test_views: Optional[int] = None
    """Evaluate at most this many test views (after the stride); None = all."""

    def __post_init__(self) -> None:
        _require(self.downsample >= 1, f"data.downsample: must be >= 1, got {self.downsample}")
        _require(self.test_stride >= 1, f"data.test_stride: must be >= 1, got {self.test_stride}")
        if self.near_far is not None:
            n, f = self.near_far
            _require(0 <= n < f, f"data.near_far: need 0 <= near < far, got {self.near_far}")
        if self.aabb is not None:
            _require(len(self.aabb) == 6, f"data.aabb: need 6 numbers, got {len(self.aabb)}")
            _require(
                all(self.aabb[i] < self.aabb[i + 3] for i in range(3)),
                f"data.aabb: min must be below max on every axis, got {self.aabb}",
            )


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a training run needs, grouped."""

    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "ExperimentConfig":
        """Inverse of :meth:`to_dict` (lists become tuples). Unknown keys raise ConfigError."""

        def build(cls, sub: dict, prefix: str):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = set(sub) - names
            _require(not unknown, f"{prefix}: unknown config keys {sorted(unknown)}")
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()}
            return cls(**kwargs)

        _require(isinstance(d, dict), "config: expected a mapping")
        return ExperimentConfig(
            field=build(FieldConfig, d.get("field", {}), "field"),
            render=build(RenderConfig, d.get("render", {}), "render"),
            train=build(TrainConfig, d.get("train", {}), "train"),
            data=build(DataConfig, d.get("data", {}), "data"),
        )


THRESHOLD_APP_CAPACITY = 0.08
"""app_capacity used where a preset without one runs the ``threshold`` strategy compacted (report
quality runs, benchmarks): the starting fraction of the batch's samples; training re-sizes it
from what recent steps selected."""

SMALL_FIELD = FieldConfig(density_n_comp=(4, 4, 4), app_n_comp=(8, 8, 8), app_dim=12, feature_c=32)
"""A field that trains in seconds on a CPU (4 and 8 components, 12 appearance channels, a 32-wide
MLP): the smoke preset's, the quick report's, the smoke benchmarks' and the tests'."""

OFFICIAL_CLASS_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "density_n_comp": 8,
    "appearance_n_comp": 24,
    "app_dim": 27,
    "shadingMode": "MLP_PE",
    "near_far": BLENDER_NEAR_FAR,
    "density_shift": -10,
    "alphaMask_thres": 0.001,
    "distance_scale": 25,
    "rayMarch_weight_thres": 0.0001,
    "pos_pe": 6,
    "view_pe": 6,
    "fea_pe": 6,
    "featureC": 128,
    "step_ratio": 2.0,
    "fea2denseAct": "softplus",
})
"""The keyword defaults of the official ``TensorBase.__init__`` (not this project's defaults, which
are the configs above): what a checkpoint whose ``kwargs`` lack a key means, since the official
loader calls ``Model(**kwargs)``. ``aabb`` and ``gridSize`` have none. ``torch_reference.model``
takes them as its constructor's defaults and ``tensorf_convert`` fills them in."""

OFFICIAL_KWARGS = ("aabb", "gridSize", *OFFICIAL_CLASS_DEFAULTS)
"""The keys of an official checkpoint's ``kwargs`` (no ``device``)."""


def _official() -> ExperimentConfig:
    """The published lego config (configs/lego.txt), faithful to the official code."""
    return ExperimentConfig()


def _smoke() -> ExperimentConfig:
    """Seconds on a CPU: tiny grids and batches, for tests."""
    return ExperimentConfig(
        field=SMALL_FIELD,
        render=RenderConfig(chunk=2048),
        train=TrainConfig(
            batch_size=256,
            n_iters=60,
            upsample_at=(20, 40),
            alpha_mask_at=(30,),
            n_voxel_init=16**3,
            n_voxel_final=24**3,
            log_every=10,
        ),
        data=DataConfig(max_test_views=2),
    )


def _cpu() -> ExperimentConfig:
    """Sized for a 2-core CPU and a wall-clock budget: a box and an initial mask carved from the
    training views' alpha, valid samples compacted to a probed capacity, appearance on the 16
    largest weights per ray (a fixed cost per ray: on a CPU the appearance MLP and its 144-channel
    lookups dominate the step), three upsamples in the first 35% of the budget, and every 20th test
    view evaluated. Tuned on no scene in particular: every size is derived from the data."""
    return ExperimentConfig(
        render=RenderConfig(appearance="topk", topk=16, sample_capacity=0.05),
        train=TrainConfig(
            batch_size=2048,
            n_iters=100_000,
            schedule_unit="fraction",
            upsample_at=(0.1, 0.2, 0.35),
            alpha_mask_at=(0.1, 0.35),
            n_voxel_init=64**3,
            n_voxel_final=160**3,
            box="carve",
            carve_as_mask=True,
        ),
        data=DataConfig(test_stride=20),
    )


def _gpu() -> ExperimentConfig:
    """Sized for one H100/H200 and a wall-clock budget: the cpu preset (data-derived box, initial
    mask, budget-fraction schedule) at the official batch (4096) and grid sizes (128^3 -> 300^3)
    with top-32 appearance, and static shapes (one compilation per run: on a GPU the step's
    compilations cost more than the early steps the buffers slow down). Not tuned on a GPU yet: a
    starting point, recorded as such in reports."""
    official, cpu = TrainConfig(), _cpu()
    return dataclasses.replace(
        cpu,
        render=dataclasses.replace(cpu.render, topk=32),
        train=dataclasses.replace(
            cpu.train, batch_size=official.batch_size, n_iters=1_000_000,
            n_voxel_init=official.n_voxel_init, n_voxel_final=official.n_voxel_final, static_shapes=True,
        ),
    )


PRESETS = {
    "official": _official,
    "cpu": _cpu,
    "gpu": _gpu,
    "smoke": _smoke,
}
"""Training presets by name. Each is a function so that every call returns a fresh frozen config."""


def preset(name: str) -> ExperimentConfig:
    """The named training preset; an unknown name raises ConfigError listing the choices."""
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
