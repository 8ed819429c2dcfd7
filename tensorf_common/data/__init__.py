"""Datasets for both frameworks (numpy only): camera rays (:mod:`.rays`), the Blender loader and its
splits (:mod:`.blender`), where a dataset comes from (:mod:`.scene_cache`: a folder, or the built-in
procedural scene) and the training-batch sampler (:mod:`.sampler`).

The names below are re-exported from those modules, their real homes.
"""

from .blender import (
    OPENGL_TO_OPENCV,
    SPLITS,
    BlenderDataset,
    SplitData,
    area_downsample,
    composite,
    load_blender,
    load_from_config,
    load_split,
)
from .rays import get_ray_directions, get_rays
from .sampler import BatchSampler
from .scene_cache import cache_root, resolve_data_dir, scene_cache_dir

__all__ = [
    "OPENGL_TO_OPENCV",
    "SPLITS",
    "BatchSampler",
    "BlenderDataset",
    "SplitData",
    "area_downsample",
    "cache_root",
    "composite",
    "get_ray_directions",
    "get_rays",
    "load_blender",
    "load_from_config",
    "load_split",
    "resolve_data_dir",
    "scene_cache_dir",
]
