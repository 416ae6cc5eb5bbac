from ds_tp.translators.layout import Layout, effective_batch, resolve_layout


def test_rank_groups_are_orthogonal():
    layout = Layout(dp_replicate=2, dp_shard=2, tp=2, cp=2)
    assert layout.world == 16
    tp, cp, dp = layout.groups("tp"), layout.groups("cp"), layout.groups("dp")
    assert tp[0] == [0, 1] and cp[0] == [0, 2] and dp[0] == [0, 4, 8, 12]
    for a in tp:
        for b in cp:
            assert len(set(a) & set(b)) <= 1
    assert sorted(r for g in tp for r in g) == list(range(16))


def test_effective_batch_counts_only_data_parallel_ranks():
    layout, _ = resolve_layout({"tensor_parallel_size": 2, "context_parallel_size": 2}, 8)
    assert layout.dp == 2 and effective_batch(1, 8, layout) == 16


def test_layout_product_without_world():
    layout, found = resolve_layout({"dp_shard_size": 4, "tensor_parallel_size": 2}, None)
    assert not found and layout.world == 8
