"""``TensorVMSplit`` and ``TensorCP``: the components assembled into the official modules.

The state_dict keys and shapes are exactly the official ones, e.g. for a grid ``[X, Y, Z]``::

    density_plane.{0,1,2}: (1, C, Y, X), (1, C, Z, X), (1, C, Z, Y)
    density_line.{0,1,2}:  (1, C, Z, 1), (1, C, Y, 1), (1, C, X, 1)
    app_plane.* / app_line.*: the same with the appearance components
    basis_mat.weight: (app_dim, sum C)
    renderModule.mlp.{0,2,4}.{weight,bias}   # MLP decoders only

so official ``.th`` checkpoints load here (see :mod:`torch_reference.checkpoint`). The constructor takes
the official keyword arguments (those stored in a checkpoint's ``kwargs``) and consumes the torch RNG
in the official order, so ``torch.manual_seed(s)`` gives the official initial parameters.
Non-parameter state (``aabb``, ``gridSize``, ``stepSize``, ``nSamples``, ``alphaMask``) lives in plain
attributes, as in the official code, and is not in the state_dict.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from tensorf_common.config import OFFICIAL_CLASS_DEFAULTS as _OFFICIAL
from tensorf_common.config import ConfigError, FieldConfig, RenderConfig
from tensorf_common.errors import CheckpointError
from tensorf_common.geometry import step_size_and_n_samples

from . import fields, regularizers
from .alpha_mask import AlphaGridMask, build_alpha_mask, compute_dense_alpha, filter_rays, shrink_box
from .appearance import render_module_from_kwargs
from .rendering import render_rays
from .sampling import normalize_coord


def _as_list(n: Union[int, Sequence[int]], count: int) -> list[int]:
    if isinstance(n, (int,)):
        return [int(n)] * count
    return [int(v) for v in n]


class TensorBase(nn.Module):
    """Shared state and behaviour of the VM and CP models (official ``TensorBase``).

    Args are the official ones with the official defaults (``tensorf_common.config.OFFICIAL_CLASS_DEFAULTS``);
    ``device`` is where parameters live. ``init_scale`` overrides the official normal-init std (0.1 VM,
    0.2 CP) and is not saved. ``appearance`` / ``topk`` choose the samples that get appearance
    (official: ``threshold``); they are not saved either.
    """

    default_init_scale = 0.1

    def __init__(
        self,
        aabb,
        gridSize: Sequence[int],
        device: Union[str, torch.device] = "cpu",
        density_n_comp: Union[int, Sequence[int]] = _OFFICIAL["density_n_comp"],
        appearance_n_comp: Union[int, Sequence[int]] = _OFFICIAL["appearance_n_comp"],
        app_dim: int = _OFFICIAL["app_dim"],
        shadingMode: str = _OFFICIAL["shadingMode"],
        alphaMask: Optional[AlphaGridMask] = None,
        near_far: Sequence[float] = _OFFICIAL["near_far"],
        density_shift: float = _OFFICIAL["density_shift"],
        alphaMask_thres: float = _OFFICIAL["alphaMask_thres"],
        distance_scale: float = _OFFICIAL["distance_scale"],
        rayMarch_weight_thres: float = _OFFICIAL["rayMarch_weight_thres"],
        pos_pe: int = _OFFICIAL["pos_pe"],
        view_pe: int = _OFFICIAL["view_pe"],
        fea_pe: int = _OFFICIAL["fea_pe"],
        featureC: int = _OFFICIAL["featureC"],
        step_ratio: float = _OFFICIAL["step_ratio"],
        fea2denseAct: str = _OFFICIAL["fea2denseAct"],
        *,
        init_scale: Optional[float] = None,
        appearance: str = "threshold",
        topk: int = 32,
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.density_n_comp = _as_list(density_n_comp, 3)
        self.app_n_comp = _as_list(appearance_n_comp, 3)
        self.app_dim = int(app_dim)
        self.aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone().to(self.device)
        self.alphaMask = alphaMask
        self.density_shift = density_shift
        self.alphaMask_thres = alphaMask_thres
        self.distance_scale = distance_scale
        self.rayMarch_weight_thres = rayMarch_weight_thres
        self.fea2denseAct = fea2denseAct
        self.near_far = list(near_far)
        self.step_ratio = step_ratio
        self.init_scale = self.default_init_scale if init_scale is None else float(init_scale)
        self.appearance = appearance
        self.topk = int(topk)

        self.update_stepSize(gridSize)
        self.matMode = [list(m) for m in fields.MAT_MODE]
        self.vecMode = list(fields.VEC_MODE)
        self.init_svd_volume()
        self.shadingMode, self.pos_pe, self.view_pe, self.fea_pe, self.featureC = (
            shadingMode,
            pos_pe,
            view_pe,
            fea_pe,
            featureC,
        )
        module = render_module_from_kwargs(shadingMode, self.app_dim, pos_pe, view_pe, fea_pe, featureC)
        self.renderModule = module.to(self.device) if isinstance(module, nn.Module) else module
        self.to(self.device)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        field_cfg: FieldConfig,
        render_cfg: RenderConfig,
        aabb,
        grid_size: Sequence[int],
        near_far: Sequence[float],
        device: Union[str, torch.device] = "cpu",
    ) -> "TensorBase":
        """A model from the project configs (``TensorBase.from_config`` picks VM or CP from ``field_cfg.model``)."""
        target = {"VM": TensorVMSplit, "CP": TensorCP}[field_cfg.model]
        if cls is not TensorBase and cls is not target:
            raise ConfigError(f"field.model: {field_cfg.model!r} does not build a {cls.__name__}")
        return target(
            aabb,
            list(grid_size),
            device,
            density_n_comp=list(field_cfg.density_components),
            appearance_n_comp=list(field_cfg.app_components),
            app_dim=field_cfg.app_dim,
            shadingMode=field_cfg.shading_mode,
            near_far=list(near_far),
            density_shift=field_cfg.density_shift,
            alphaMask_thres=render_cfg.alpha_mask_thres,
            distance_scale=field_cfg.distance_scale,
            rayMarch_weight_thres=render_cfg.ray_march_weight_thres,
            pos_pe=field_cfg.pos_pe,
            view_pe=field_cfg.view_pe,
            fea_pe=field_cfg.fea_pe,
            featureC=field_cfg.feature_c,
            step_ratio=render_cfg.step_ratio,
            fea2denseAct=field_cfg.fea2dense_act,
            init_scale=field_cfg.resolved_init_scale,
            appearance=render_cfg.appearance,
            topk=render_cfg.topk,
        )

    def init_svd_volume(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def update_stepSize(self, gridSize: Sequence[int]) -> None:
        """Grid size, voxel units, step size and the evaluation sample count (official ``update_stepSize``)."""
        grid = [int(g) for g in gridSize]
        self.aabbSize = self.aabb[1] - self.aabb[0]
        self.invaabbSize = 2.0 / self.aabbSize
        self.gridSize = torch.LongTensor(grid).to(self.device)
        self.units = self.aabbSize / (self.gridSize - 1)
        step, n = step_size_and_n_samples(self.aabb.detach().cpu().numpy(), grid, self.step_ratio)
        self.stepSize = step
        self.aabbDiag = torch.sqrt(torch.sum(torch.square(self.aabbSize)))
        self.nSamples = n

    def get_kwargs(self) -> dict[str, Any]:
        """The official constructor kwargs stored in checkpoints (no ``device``)."""
        return {
            "aabb": self.aabb,
            "gridSize": self.gridSize.tolist(),
            "density_n_comp": self.density_n_comp,
            "appearance_n_comp": self.app_n_comp,
            "app_dim": self.app_dim,
            "density_shift": self.density_shift,
            "alphaMask_thres": self.alphaMask_thres,
            "distance_scale": self.distance_scale,
            "rayMarch_weight_thres": self.rayMarch_weight_thres,
            "fea2denseAct": self.fea2denseAct,
            "near_far": self.near_far,
            "step_ratio": self.step_ratio,
            "shadingMode": self.shadingMode,
            "pos_pe": self.pos_pe,
            "view_pe": self.view_pe,
            "fea_pe": self.fea_pe,
            "featureC": self.featureC,
        }

    # --- fields -------------------------------------------------------------------------------

    def normalize_coord(self, xyz: Tensor) -> Tensor:
        return normalize_coord(xyz, self.aabb)

    def feature2density(self, density_features: Tensor) -> Tensor:
        return fields.feature2density(density_features, self.density_shift, self.fea2denseAct)

    def compute_densityfeature(self, xyz_n: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_appfeature(self, xyz_n: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def density(self, xyz_n: Tensor) -> Tensor:
        """Sigma (P,) at normalised points (P, 3)."""
        return self.feature2density(self.compute_densityfeature(xyz_n))

    def color(self, xyz_n: Tensor, viewdirs: Tensor) -> Tensor:
        """RGB (P, 3) at normalised points and view directions."""
        return self.renderModule(xyz_n, viewdirs, self.compute_appfeature(xyz_n))

    # --- rendering ----------------------------------------------------------------------------

    def render(
        self,
        rays_chunk: Tensor,
        white_bg: bool = True,
        is_train: bool = False,
        ndc_ray: bool = False,
        N_samples: int = -1,
        jitter: Optional[Tensor] = None,
        train_white_bg: Optional[bool] = None,
        app_gumbel: Optional[Tensor] = None,
    ) -> dict[str, Tensor]:
        """The full output dict of :func:`rendering.render_rays` (rgb, depth, acc, weights, z, counts)."""
        n = N_samples if N_samples > 0 else self.nSamples
        mask = self.alphaMask
        return render_rays(
            rays_chunk,
            self.density,
            self.color,
            aabb=self.aabb,
            near=float(self.near_far[0]),
            far=float(self.near_far[1]),
            step_size=float(self.stepSize),
            n_samples=int(n),
            distance_scale=float(self.distance_scale),
            ray_march_weight_thres=float(self.rayMarch_weight_thres),
            white_bg=white_bg,
            is_train=is_train,
            jitter=jitter,
            alpha_mask=None if mask is None else mask.alpha_volume[0, 0].to(rays_chunk.device),
            mask_aabb=None if mask is None else mask.aabb.to(rays_chunk.device),
            ndc_ray=ndc_ray,
            appearance=self.appearance,
            topk=self.topk,
            app_gumbel=app_gumbel,
            train_white_bg=train_white_bg,
        )

    def forward(
        self,
        rays_chunk: Tensor,
        white_bg: bool = True,
        is_train: bool = False,
        ndc_ray: bool = False,
        N_samples: int = -1,
        jitter: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        """Official call: rays (R, 6) -> (rgb_map (R, 3), depth_map (R,)). ``jitter`` (R,) in [0, 1)
        replaces the official per-ray ``torch.rand`` in training (drawn when None)."""
        out = self.render(rays_chunk, white_bg, is_train, ndc_ray, N_samples, jitter)
        return out["rgb_map"], out["depth_map"]

    # --- alpha mask, shrink, upsample, ray filtering -------------------------------------------

    @torch.no_grad()
    def getDenseAlpha(self, gridSize: Optional[Sequence[int]] = None) -> Tensor:
        """Alpha (X, Y, Z) at the dense grid points (``1 - exp(-sigma * stepSize)``, current mask applied)."""
        grid = self.gridSize.tolist() if gridSize is None else [int(g) for g in gridSize]
        mask = self.alphaMask
        return compute_dense_alpha(
            lambda p: self.density(self.normalize_coord(p)),
            self.aabb,
            grid,
            float(self.stepSize),
            None if mask is None else mask.contains,
        )

    @torch.no_grad()
    def updateAlphaMask(self, gridSize: Sequence[int] = (200, 200, 200)) -> Optional[Tensor]:
        """Rebuild the mask at ``gridSize`` and return the tight box of the kept voxels.

        Deliberate difference: when no voxel passes the threshold the official code crashes; here the
        previous mask is kept, a warning is issued and None is returned.
        """
        alpha = self.getDenseAlpha(gridSize)
        mask, new_aabb = build_alpha_mask(alpha, self.aabb, float(self.alphaMask_thres))
        if new_aabb is None:
            warnings.warn(
                f"updateAlphaMask: no voxel of the {list(gridSize)} grid has alpha >= {self.alphaMask_thres}; "
                "the mask is left unchanged",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        self.alphaMask = AlphaGridMask(self.aabb.clone(), mask.float())
        return new_aabb

    def _crop(self, t_l: list[int], b_r: list[int]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def shrink(self, new_aabb) -> None:
        """Crop the grid to ``new_aabb`` (official ``shrink``; the grid becomes non-cubic)."""
        mask_grid = self.alphaMask.gridSize if self.alphaMask is not None else self.gridSize.tolist()
        t_l, b_r, box, new_size = shrink_box(self.aabb.cpu(), self.gridSize.tolist(), torch.as_tensor(new_aabb).cpu(), mask_grid)
        self._crop(t_l, b_r)
        self.aabb = box.to(self.device)
        self.update_stepSize(new_size)

    @torch.no_grad()
    def upsample_volume_grid(self, res_target: Sequence[int]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def ray_keep_mask(self, rays: Tensor, N_samples: int = 256, chunk: int = 10240 * 5, bbox_only: bool = False) -> Tensor:
        """(R,) bool: the rays ``filtering_rays`` keeps."""
        rays = rays.to(self.device)
        mask = None if (bbox_only or self.alphaMask is None) else self.alphaMask
        return filter_rays(
            rays[:, :3],
            rays[:, 3:6],
            self.aabb,
            near=float(self.near_far[0]),
            far=float(self.near_far[1]),
            step_size=float(self.stepSize),
            mask=None if mask is None else mask.mask,
            mask_aabb=None if mask is None else mask.aabb,
            n_samples=N_samples,
            chunk=chunk,
        )

    @torch.no_grad()
    def filtering_rays(
        self, all_rays: Tensor, all_rgbs: Tensor, N_samples: int = 256, chunk: int = 10240 * 5, bbox_only: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Official ``filtering_rays``: the rays (and colours) that hit the box (``bbox_only``) or the mask."""
        keep = self.ray_keep_mask(all_rays.reshape(-1, all_rays.shape[-1]), N_samples, chunk, bbox_only)
        keep = keep.cpu().view(all_rgbs.shape[:-1])
        return all_rays[keep], all_rgbs[keep]

    # --- optimisation ---------------------------------------------------------------------------

    def get_optparam_groups(self, lr_init_spatialxyz: float = 0.02, lr_init_network: float = 0.001) -> list[dict]:
        """Adam parameter groups (official order): grids at ``lr_init_spatialxyz``, basis and MLP at ``lr_init_network``."""
        groups = [{"params": list(g), "lr": lr_init_spatialxyz} for g in self.grid_groups()]
        groups.append({"params": list(self.basis_mat.parameters()), "lr": lr_init_network})
        if isinstance(self.renderModule, nn.Module):
            groups.append({"params": list(self.renderModule.parameters()), "lr": lr_init_network})
        return groups

    def grid_groups(self) -> list[nn.ParameterList]:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- checkpoints (the dict layout; files are torch_reference.checkpoint's) ------------------

    def checkpoint_dict(self, numpy_mask: bool = False) -> dict[str, Any]:
        """The official checkpoint dict (``TensorBase.save`` without the file), CPU tensors.

        The mask's packed bits are a torch ``uint8`` tensor by default (no numpy globals needed to
        read the file; the official loader reads it too), the official numpy array with ``numpy_mask``.
        """
        kwargs = self.get_kwargs()
        kwargs["aabb"] = kwargs["aabb"].detach().cpu().clone()
        ckpt: dict[str, Any] = {
            "kwargs": kwargs,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        if self.alphaMask is not None:
            shape, packed = self.alphaMask.packed()
            ckpt["alphaMask.shape"] = shape
            ckpt["alphaMask.mask"] = packed if numpy_mask else torch.from_numpy(packed)
            ckpt["alphaMask.aabb"] = self.alphaMask.aabb.detach().cpu().clone()
        return ckpt

    def load(self, ckpt: dict, source: str = "checkpoint") -> None:
        """Install an official checkpoint dict's mask and parameters (official ``load``); the
        state_dict must fit this model exactly (CheckpointError naming ``source`` and the key)."""
        sd = ckpt["state_dict"]
        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"{source}: state_dict does not fit {type(self).__name__}: missing {missing}, unexpected {unexpected}"
            )
        for k, v in own.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                raise CheckpointError(
                    f"{source}: state_dict key {k!r} has shape {tuple(sd[k].shape)}, the model expects {tuple(v.shape)}"
                )
        if "alphaMask.aabb" in ckpt:
            mask = AlphaGridMask.from_packed(ckpt["alphaMask.shape"], ckpt["alphaMask.mask"], ckpt["alphaMask.aabb"])
            self.alphaMask = mask.to(self.device)
        else:
            self.alphaMask = None
        self.load_state_dict(sd)


class TensorVMSplit(TensorBase):
    """The VM decomposition: three planes and three lines per component group (official ``TensorVMSplit``)."""

    default_init_scale = 0.1

    def init_svd_volume(self) -> None:
        grid = self.gridSize.tolist()
        dp, dl = fields.init_vm(grid, self.density_n_comp, self.init_scale)
        self.density_plane = nn.ParameterList([nn.Parameter(t) for t in dp])
        self.density_line = nn.ParameterList([nn.Parameter(t) for t in dl])
        ap, al = fields.init_vm(grid, self.app_n_comp, self.init_scale)
        self.app_plane = nn.ParameterList([nn.Parameter(t) for t in ap])
        self.app_line = nn.ParameterList([nn.Parameter(t) for t in al])
        self.basis_mat = nn.Linear(sum(self.app_n_comp), self.app_dim, bias=False)

    def grid_groups(self) -> list[nn.ParameterList]:
        return [self.density_line, self.density_plane, self.app_line, self.app_plane]

    def compute_densityfeature(self, xyz_n: Tensor) -> Tensor:
        return fields.vm_density_feature(list(self.density_plane), list(self.density_line), xyz_n)

    def compute_appfeature(self, xyz_n: Tensor) -> Tensor:
        return self.basis_mat(fields.vm_features(list(self.app_plane), list(self.app_line), xyz_n))

    @torch.no_grad()
    def upsample_volume_grid(self, res_target: Sequence[int]) -> None:
        """Resize every plane and line to ``res_target`` [X, Y, Z] (new Parameters: recreate the optimizer)."""
        ap, al = fields.upsample_vm(list(self.app_plane), list(self.app_line), res_target)
        dp, dl = fields.upsample_vm(list(self.density_plane), list(self.density_line), res_target)
        self._set_grids(dp, dl, ap, al)
        self.update_stepSize(res_target)

    def _crop(self, t_l: list[int], b_r: list[int]) -> None:
        dp, dl = fields.shrink_vm(list(self.density_plane), list(self.density_line), t_l, b_r)
        ap, al = fields.shrink_vm(list(self.app_plane), list(self.app_line), t_l, b_r)
        self._set_grids(dp, dl, ap, al)

    def _set_grids(self, dp, dl, ap, al) -> None:
        for k in range(3):
            self.density_plane[k] = nn.Parameter(dp[k])
            self.density_line[k] = nn.Parameter(dl[k])
            self.app_plane[k] = nn.Parameter(ap[k])
            self.app_line[k] = nn.Parameter(al[k])

    def density_L1(self) -> Tensor:
        interleaved = [t for k in range(3) for t in (self.density_plane[k], self.density_line[k])]
        return regularizers.density_l1(interleaved)

    def TV_loss_density(self, reg=None) -> Tensor:
        return regularizers.tv_loss(list(self.density_plane), 1e-2) if reg is None else sum(reg(p) * 1e-2 for p in self.density_plane)

    def TV_loss_app(self, reg=None) -> Tensor:
        return regularizers.tv_loss(list(self.app_plane), 1e-2) if reg is None else sum(reg(p) * 1e-2 for p in self.app_plane)

    def vector_comp_diffs(self) -> Tensor:
        return regularizers.ortho_loss(list(self.density_line)) + regularizers.ortho_loss(list(self.app_line))


class TensorCP(TensorBase):
    """The CP decomposition: rank-1 components of three lines (official ``TensorCP``).

    ``density_n_comp`` / ``appearance_n_comp`` are lists whose first entry is the rank (official).
    """

    default_init_scale = 0.2

    def init_svd_volume(self) -> None:
        grid = self.gridSize.tolist()
        self.density_line = nn.ParameterList(
            [nn.Parameter(t) for t in fields.init_cp(grid, self.density_n_comp[0], self.init_scale)]
        )
        self.app_line = nn.ParameterList([nn.Parameter(t) for t in fields.init_cp(grid, self.app_n_comp[0], self.init_scale)])
        self.basis_mat = nn.Linear(self.app_n_comp[0], self.app_dim, bias=False)

    def grid_groups(self) -> list[nn.ParameterList]:
        return [self.density_line, self.app_line]

    def compute_densityfeature(self, xyz_n: Tensor) -> Tensor:
        return fields.cp_density_feature(list(self.density_line), xyz_n)

    def compute_appfeature(self, xyz_n: Tensor) -> Tensor:
        return self.basis_mat(fields.cp_features(list(self.app_line), xyz_n))

    @torch.no_grad()
    def upsample_volume_grid(self, res_target: Sequence[int]) -> None:
        dl = fields.upsample_cp(list(self.density_line), res_target)
        al = fields.upsample_cp(list(self.app_line), res_target)
        self._set_lines(dl, al)
        self.update_stepSize(res_target)

    def _crop(self, t_l: list[int], b_r: list[int]) -> None:
        self._set_lines(fields.shrink_cp(list(self.density_line), t_l, b_r), fields.shrink_cp(list(self.app_line), t_l, b_r))

    def _set_lines(self, dl, al) -> None:
        for k in range(3):
            self.density_line[k] = nn.Parameter(dl[k])
            self.app_line[k] = nn.Parameter(al[k])

    def density_L1(self) -> Tensor:
        return regularizers.density_l1(list(self.density_line))

    def TV_loss_density(self, reg=None) -> Tensor:
        return regularizers.tv_loss(list(self.density_line), 1e-3) if reg is None else sum(reg(p) * 1e-3 for p in self.density_line)

    def TV_loss_app(self, reg=None) -> Tensor:
        return regularizers.tv_loss(list(self.app_line), 1e-3) if reg is None else sum(reg(p) * 1e-3 for p in self.app_line)

    def vector_comp_diffs(self) -> Tensor:
        """Ortho regulariser on the lines (the official ``TensorCP`` lacks this method and crashes)."""
        return regularizers.ortho_loss(list(self.density_line)) + regularizers.ortho_loss(list(self.app_line))


@torch.no_grad()
def render_batched(
    model: TensorBase,
    rays: Tensor,
    chunk: int = 4096,
    N_samples: int = -1,
    white_bg: bool = True,
    ndc_ray: bool = False,
) -> tuple[Tensor, Tensor]:
    """Evaluation rendering in chunks (official ``OctreeRender_trilinear_fast``) -> (rgb (R, 3), depth (R,))."""
    rgbs, depths = [], []
    for start in range(0, rays.shape[0], chunk):
        rgb, depth = model(rays[start : start + chunk].to(model.device), white_bg=white_bg, is_train=False, ndc_ray=ndc_ray, N_samples=N_samples)
        rgbs.append(rgb)
        depths.append(depth)
    if not rgbs:
        return torch.zeros(0, 3), torch.zeros(0)
    return torch.cat(rgbs), torch.cat(depths)


def model_class(name: str) -> type[TensorBase]:
    """The model class for an official ``model_name`` (``TensorVMSplit`` or ``TensorCP``)."""
    classes = {"TensorVMSplit": TensorVMSplit, "TensorCP": TensorCP, "VM": TensorVMSplit, "CP": TensorCP}
    if name not in classes:
        raise ConfigError(f"model_name: unknown model {name!r}; choose TensorVMSplit or TensorCP")
    return classes[name]


__all__ = [
    "TensorBase",
    "TensorVMSplit",
    "TensorCP",
    "render_batched",
    "model_class",
]
