"""fields: jax_tensorf.fields vs torch_reference.fields on the same (converted) planes and lines.

Lookups at interior points, at exact grid nodes and box faces, and outside [-1, 1] (zero padding);
VM and CP features in every JAX vmap layout, and their gradients w.r.t. the planes and lines
against torch autograd (``grid_sample``'s backward) for the lookups with a backward of their own;
the density activation; upsampling and shrinking.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_tensorf.fields as jf
import torch_reference.fields as tf
from compare import EXACT, GRAD, assert_close
from tensorf_convert.state_dict import line_to_jax, line_to_torch, plane_to_jax, plane_to_torch

C = 5

# The JAX side runs jitted, as in use (and compiling once is cheaper than eager dispatch per op).
grid_sample_2d = jax.jit(jf.grid_sample_2d)
grid_sample_1d = jax.jit(jf.grid_sample_1d)
vm_features = jax.jit(jf.vm_features, static_argnums=3)
vm_density_feature = jax.jit(jf.vm_density_feature, static_argnums=3)
cp_features = jax.jit(jf.cp_features, static_argnums=2)
feature2density = jax.jit(jf.feature2density, static_argnums=(1, 2))
upsample_vm = jax.jit(jf.upsample_vm, static_argnums=2)
upsample_cp = jax.jit(jf.upsample_cp, static_argnums=1)


def _planes_lines(grid, comps=(3, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    planes = [torch.randn(tf.plane_shape(grid, k, comps[k]), generator=g) for k in range(3)]
    lines = [torch.randn(tf.line_shape(grid, k, comps[k]), generator=g) for k in range(3)]
    return planes, lines


def _jax(planes, lines):
    return [jnp.asarray(plane_to_jax(p)) for p in planes], [jnp.asarray(line_to_jax(l)) for l in lines]


def _point_sets(twins):
    return {
        "interior": twins.points(1500, seed=3),
        "out_of_range": twins.points(800, seed=4, lo=-1.3, hi=1.3),
        "edges": twins.edge_points(),
    }


@pytest.mark.parametrize("where", ["interior", "out_of_range", "edges"])
def test_grid_sample_2d(twins, where):
    uv = _point_sets(twins)[where][:, :2]
    plane = torch.randn(1, C, 11, 7, generator=torch.Generator().manual_seed(1))
    got = grid_sample_2d(jnp.asarray(plane_to_jax(plane)), jnp.asarray(uv))
    want = tf.grid_sample_2d(plane, torch.from_numpy(uv))
    assert_close(f"fields.grid_sample_2d[{where}]", got, want)


@pytest.mark.parametrize("where", ["interior", "out_of_range", "edges"])
def test_grid_sample_1d(twins, where):
    t = _point_sets(twins)[where][:, 2]
    line = torch.randn(1, C, 9, 1, generator=torch.Generator().manual_seed(2))
    got = grid_sample_1d(jnp.asarray(line_to_jax(line)), jnp.asarray(t))
    want = tf.grid_sample_1d(line, torch.from_numpy(t))
    assert_close(f"fields.grid_sample_1d[{where}]", got, want)


@pytest.mark.parametrize("variant", jf.VMAP_VARIANTS)
def test_vm_features_and_density_feature(twins, variant):
    planes, lines = _planes_lines(twins.GRID)
    jp, jl = _jax(planes, lines)
    pts = np.concatenate([twins.points(1200, seed=5), twins.points(240, seed=6, lo=-1.2, hi=1.2)])
    xyz_j = jnp.asarray(pts.reshape(48, 30, 3)) if variant in ("rays", "samples") else jnp.asarray(pts)
    feat = np.asarray(vm_features(jp, jl, xyz_j, variant)).reshape(len(pts), -1)
    dens = np.asarray(vm_density_feature(jp, jl, xyz_j, variant)).reshape(-1)
    xyz_t = torch.from_numpy(pts)
    assert_close(f"fields.vm_features[{variant}]", feat, tf.vm_features(planes, lines, xyz_t))
    assert_close(f"fields.vm_density_feature[{variant}]", dens, tf.vm_density_feature(planes, lines, xyz_t))


@pytest.mark.parametrize("variant", ["flat", "rays", *jf.LOOKUP_VARIANTS])
def test_cp_features(twins, variant):
    g = torch.Generator().manual_seed(8)
    lines = [torch.randn(tf.line_shape(twins.GRID, k, 7), generator=g) * 0.7 for k in range(3)]
    jl = [jnp.asarray(line_to_jax(l)) for l in lines]
    pts = np.concatenate([twins.points(1000, seed=9), twins.edge_points()[:200]])
    xyz_j = jnp.asarray(pts.reshape(40, -1, 3)) if variant == "rays" else jnp.asarray(pts)
    got = np.asarray(cp_features(jl, xyz_j, variant)).reshape(len(pts), -1)
    assert_close(f"fields.cp_features[{variant}]", got, tf.cp_features(lines, torch.from_numpy(pts)))


@pytest.mark.parametrize("variant", ["flat", *jf.LOOKUP_VARIANTS])
def test_vm_and_cp_gradients(twins, variant):
    """Gradients of random projections of ``vm_features`` and ``cp_features`` w.r.t. every plane
    and line, against torch autograd through the reference lookups (interior, edge and outside
    points)."""
    planes, lines = _planes_lines(twins.GRID, seed=14)
    g = torch.Generator().manual_seed(15)
    cp_lines = [torch.randn(tf.line_shape(twins.GRID, k, 6), generator=g) for k in range(3)]
    pts = np.concatenate([twins.points(900, seed=16), twins.edge_points()[:150], twins.points(150, seed=17, lo=-1.2, hi=1.2)])
    rng = np.random.default_rng(18)
    w_vm = rng.normal(size=(len(pts), sum(p.shape[1] for p in planes))).astype(np.float32)
    w_cp = rng.normal(size=(len(pts), 6)).astype(np.float32)

    def loss_j(vm, cp):
        f = jf.vm_features(vm["planes"], vm["lines"], jnp.asarray(pts), variant)
        c = jf.cp_features(cp, jnp.asarray(pts), variant)
        return jnp.sum(f * w_vm) + jnp.sum(c * w_cp)

    jp, jl = _jax(planes, lines)
    g_vm, g_cp = jax.jit(jax.grad(loss_j, argnums=(0, 1)))({"planes": jp, "lines": jl}, [jnp.asarray(line_to_jax(l)) for l in cp_lines])
    leaves = [t.requires_grad_() for t in (*planes, *lines, *cp_lines)]
    xyz_t = torch.from_numpy(pts)
    loss_t = (tf.vm_features(planes, lines, xyz_t) * torch.from_numpy(w_vm)).sum()
    loss_t = loss_t + (tf.cp_features(cp_lines, xyz_t) * torch.from_numpy(w_cp)).sum()
    loss_t.backward()
    got = {
        "planes": [plane_to_torch(x) for x in g_vm["planes"]],
        "lines": [line_to_torch(x) for x in g_vm["lines"]],
        "cp_lines": [line_to_torch(x) for x in g_cp],
    }
    want = {"planes": [t.grad for t in leaves[:3]], "lines": [t.grad for t in leaves[3:6]], "cp_lines": [t.grad for t in leaves[6:]]}
    assert_close(f"fields.lookup_gradients[{variant}]", got, want, GRAD)


dense_density_feature = jax.jit(jf.dense_density_feature, static_argnums=1)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_dense_density_lookup_equals_the_official_density_feature(twins, model):
    """JAX's recomposed-grid density (``render.density_lookup=dense``) against the reference's factored
    ``compute_densityfeature``: interior points, box faces and grid nodes, and points outside."""
    pts = np.concatenate([twins.points(1200, seed=10), twins.edge_points(), twins.points(240, seed=11, lo=-1.2, hi=1.2)])
    xyz_t = torch.from_numpy(pts)
    if model == "VM":
        planes, lines = _planes_lines(twins.GRID, seed=12)
        jp, jl = _jax(planes, lines)
        got = dense_density_feature({"planes": jp, "lines": jl}, "VM", jnp.asarray(pts))
        want = tf.vm_density_feature(planes, lines, xyz_t)
    else:
        g = torch.Generator().manual_seed(13)
        lines = [torch.randn(tf.line_shape(twins.GRID, k, 6), generator=g) * 0.7 for k in range(3)]
        got = dense_density_feature({"lines": [jnp.asarray(line_to_jax(l)) for l in lines]}, "CP", jnp.asarray(pts))
        want = tf.cp_features(lines, xyz_t).sum(-1)
    assert_close(f"fields.dense_density_feature[{model}]", np.asarray(got), want)


@pytest.mark.parametrize("act", ["softplus", "relu"])
def test_feature2density(act):
    f = np.linspace(-30, 30, 2001, dtype=np.float32)
    got = feature2density(jnp.asarray(f), -10.0, act)
    want = tf.feature2density(torch.from_numpy(f), -10.0, act)
    assert_close(f"fields.feature2density[{act}]", got, want)


def test_init_shapes_match_the_converted_layout(twins):
    planes, lines = tf.init_vm(twins.GRID, (3, 4, 5))
    key = jax.random.PRNGKey(0)
    jv = jax.eval_shape(lambda k: jf.init_vm(k, twins.GRID, (3, 4, 5), 0.1), key)
    shapes_t = [plane_to_jax(p).shape for p in planes] + [line_to_jax(l).shape for l in lines]
    shapes_j = [p.shape for p in jv["planes"]] + [l.shape for l in jv["lines"]]
    assert_close("fields.init_vm[shapes]", np.array(shapes_j[:3]), np.array(shapes_t[:3]), EXACT)
    assert_close("fields.init_vm[line shapes]", np.array(shapes_j[3:]), np.array(shapes_t[3:]), EXACT)
    cp_t = tf.init_cp(twins.GRID, 6)
    cp_j = jax.eval_shape(lambda k: jf.init_cp(k, twins.GRID, 6, 0.2), key)
    assert_close(
        "fields.init_cp[shapes]", np.array([l.shape for l in cp_j["lines"]]), np.array([line_to_jax(l).shape for l in cp_t]), EXACT
    )


@pytest.mark.parametrize("reso", [(21, 17, 24), (7, 11, 5), (13, 20, 9)], ids=["up", "down", "mixed"])
def test_upsample_vm(twins, reso):
    planes, lines = _planes_lines(twins.GRID)
    jp, jl = _jax(planes, lines)
    up_p, up_l = upsample_vm(jp, jl, tuple(reso))
    tp, tl = tf.upsample_vm(planes, lines, reso)
    assert_close(
        f"fields.upsample_vm[{'x'.join(map(str, reso))}]",
        {"planes": list(up_p), "lines": list(up_l)},
        {"planes": [plane_to_jax(p) for p in tp], "lines": [line_to_jax(l) for l in tl]},
    )
    assert jf.grid_size_of({"lines": up_l}) == list(reso) == tf.grid_size_of(tl)


def test_upsample_cp(twins):
    lines = [torch.randn(tf.line_shape(twins.GRID, k, 6), generator=torch.Generator().manual_seed(k)) for k in range(3)]
    reso = (23, 19, 14)
    got = upsample_cp([jnp.asarray(line_to_jax(l)) for l in lines], reso)
    want = [line_to_jax(l) for l in tf.upsample_cp(lines, reso)]
    assert_close("fields.upsample_cp", list(got), want)


def test_shrink_vm_and_cp(twins):
    planes, lines = _planes_lines(twins.GRID)
    jp, jl = _jax(planes, lines)
    t_l, b_r = [2, 1, 3], [11, 10, 8]
    sp, sl = jf.shrink_vm(jp, jl, t_l, b_r)
    tp, tl = tf.shrink_vm(planes, lines, t_l, b_r)
    assert_close(
        "fields.shrink_vm",
        {"planes": list(sp), "lines": list(sl)},
        {"planes": [plane_to_jax(p) for p in tp], "lines": [line_to_jax(l) for l in tl]},
        EXACT,
    )
    got = jf.shrink_cp(jl, t_l, b_r)
    want = [line_to_jax(l) for l in tf.shrink_cp(lines, t_l, b_r)]
    assert_close("fields.shrink_cp", list(got), want, EXACT)
