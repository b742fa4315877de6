"""Logical-axis rules, mesh construction, and a model sharded over 8 simulated devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import r1jax
from r1jax import sharding as sh
from tests.hf_models import left_padded_batch, make_hf_model


def test_rules_resolve_and_drop_axes_that_do_not_divide():
    mesh = sh.make_mesh(data=2, fsdp=2, tensor=2)
    rules = sh.DEFAULT_RULES
    assert sh.logical_to_spec(("embed", "mlp"), (64, 128), mesh, rules) == P("fsdp", "tensor")
    assert sh.logical_to_spec(("act_batch", "act_seq"), (8, 5), mesh, rules) == \
        P(("data", "fsdp"), None)
    # 3 KV heads cannot be split over tensor=2: replicated instead of an error.
    assert sh.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 3, 16), mesh, rules) == \
        P("fsdp", None, None)
    # batch 2 splits over data only.
    assert sh.logical_to_spec(("act_batch",), (2,), mesh, rules) == P("data")
    with pytest.raises(ValueError, match="no sharding rule for logical axis 'bogus'"):
        sh.logical_to_spec(("bogus",), (4,), mesh, rules)


def test_make_mesh_sizes_and_errors():
    mesh = sh.make_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="3 devices, but 8"):
        sh.make_mesh(data=3, fsdp=1, tensor=1)
    with pytest.raises(ValueError, match="at most one mesh size may be -1"):
        sh.make_mesh(data=-1, fsdp=-1)


def test_rule_overrides_validate_names():
    rules = sh.merge_rules({"embed": None, "act_batch": ["data"]})
    assert rules["embed"] is None and rules["act_batch"] == ("data",)
    with pytest.raises(ValueError, match="unknown logical axis 'embedding'"):
        sh.merge_rules({"embedding": ["fsdp"]})
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        sh.merge_rules({"embed": ["model"]})


def test_sharded_model_gives_single_device_logits(tmp_path):
    make_hf_model("qwen3").save_pretrained(tmp_path)
    tokens, mask, _ = left_padded_batch()
    tokens, mask = np.concatenate([tokens] * 4)[:8], np.concatenate([mask] * 4)[:8]
    single = r1jax.load_hf(str(tmp_path))
    ref = np.asarray(single(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    mesh = sh.make_mesh(data=2, fsdp=2, tensor=2)
    model = r1jax.load_hf(str(tmp_path), mesh=mesh)
    wq = model.params["layers"]["wq"]
    assert wq.sharding.spec == P(None, "fsdp", "tensor", None)
    assert len(wq.addressable_shards) == 8
    assert wq.addressable_shards[0].data.shape == (2, 32, 2, 32)
    out = jax.jit(lambda t, m: model(t, attention_mask=m))(jnp.asarray(tokens),
                                                            jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(out)[mask.astype(bool)], ref[mask.astype(bool)],
                               atol=1e-5)
