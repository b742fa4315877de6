"""Templates, length filtering, per-epoch shuffling, sharding and exact resume."""

import collections
import json

import pytest
from transformers import AutoTokenizer

from r1jax.data import (DataError, PromptSource, LoadStats, QWEN_MATH_SYSTEM, generate_countdown,
                        load_source, make_prompt_iterator, make_template)
from r1jax.rewards import countdown


@pytest.fixture(scope="module")
def tokenizer(qwen_tokenizer_dir):
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir, local_files_only=True)


def tiny_source(n):
    examples = [{"id": f"p{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}
                for i in range(n)]
    return PromptSource("tiny", "math", examples, LoadStats("tiny", n, n))


def ids_of(batches):
    return [[ex["id"] for ex in batch] for batch in batches]


def test_templates_render_the_documented_text(tokenizer):
    r1 = make_template("r1_zero").render("What is 2+2?")
    assert r1.startswith("A conversation between User and Assistant. The user asks a question")
    assert r1.endswith("<think> reasoning process here </think> <answer> answer here </answer>."
                       "\nUser: What is 2+2?\nAssistant: <think>")
    chat = make_template("qwen_math").render("What is 2+2?", tokenizer)
    assert chat == ("<|im_start|>system\n" + QWEN_MATH_SYSTEM + "<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert make_template("plain").render("What is 2+2?") == "What is 2+2?"
    custom = make_template("chat", system_prompt="Be brief.").render("Hi", tokenizer)
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    with pytest.raises(DataError, match="chat template"):
        make_template("qwen_math").render("Hi", object())
    with pytest.raises(DataError, match="unknown prompt template"):
        make_template("r2")


def test_examples_carry_prompt_ids_and_task_fields(tokenizer):
    source = generate_countdown(8, seed=3)
    it = make_prompt_iterator(source, tokenizer, "r1_zero", batch_size=4, seed=0)
    batch = next(it)
    assert len(batch) == 4
    for ex in batch:
        # ids are the tokenizer's own encoding of the rendered text (independent call)
        assert ex["prompt_ids"] == tokenizer(ex["prompt_text"])["input_ids"]
        assert ex["prompt_len"] == len(ex["prompt_ids"])
        assert ex["completion_prefix"] == "<think>" and ex["epoch"] == 0
        assert isinstance(ex["numbers"], list) and isinstance(ex["target"], int)
    json.dumps(batch)   # plain Python types only


def test_length_filter_counts_match_an_independent_count(data_dir, tokenizer):
    source = load_source("math500", data_dir=data_dir)
    it = make_prompt_iterator(source, tokenizer, "qwen_math", batch_size=8, seed=0,
                              max_prompt_tokens=200)
    lengths = [len(tokenizer(make_template("qwen_math").render(ex["question"], tokenizer),
                             add_special_tokens=False)["input_ids"]) for ex in source.examples]
    too_long = sum(n > 200 for n in lengths)
    stats = it.filter_stats
    assert (stats.total, stats.too_long, stats.kept) == (500, too_long, 500 - too_long)
    assert 0 < too_long < 500 and stats.longest_kept == max(n for n in lengths if n <= 200)
    seen = [ex for _ in range(10) for ex in next(it)]
    assert all(ex["prompt_len"] <= 200 for ex in seen)
    with pytest.raises(DataError, match="all 500 prompts are longer than max_prompt_tokens=5"):
        make_prompt_iterator(source, tokenizer, "qwen_math", 8, 0, max_prompt_tokens=5)


def test_each_epoch_is_a_new_permutation(tokenizer):
    it = make_prompt_iterator(tiny_source(12), tokenizer, "plain", batch_size=4, seed=7,
                              num_epochs=3)
    assert len(it) == 9
    batches = list(it)
    flat = [ex for b in batches for ex in b]
    epochs = [[ex["id"] for ex in flat if ex["epoch"] == e] for e in range(3)]
    for order in epochs:
        assert sorted(order) == sorted(f"p{i}" for i in range(12))
    assert len({tuple(o) for o in epochs}) == 3             # reshuffled every epoch
    assert epochs[0] != [f"p{i}" for i in range(12)]       # and shuffled at all
    with pytest.raises(StopIteration):
        next(it)
    again = make_prompt_iterator(tiny_source(12), tokenizer, "plain", 4, seed=7, num_epochs=3)
    assert ids_of(again) == ids_of(batches)                 # same seed, same order
    other = make_prompt_iterator(tiny_source(12), tokenizer, "plain", 4, seed=8, num_epochs=3)
    assert ids_of(other) != ids_of(batches)


def test_shards_split_the_global_order(tokenizer):
    n, batch, shards = 24, 3, 4
    single = make_prompt_iterator(tiny_source(n), tokenizer, "plain", batch * shards, seed=5)
    its = [make_prompt_iterator(tiny_source(n), tokenizer, "plain", batch, seed=5,
                                shard_index=s, shard_count=shards) for s in range(shards)]
    for step in range(5):   # crosses an epoch boundary (24 prompts = 2 global steps)
        parts = [[ex["id"] for ex in next(it)] for it in its]
        whole = [ex["id"] for ex in next(single)]
        # shard s holds global positions s, s + shards, ...
        assert all(parts[s] == whole[s::shards] for s in range(shards))
    with pytest.raises(ValueError, match="shard_index"):
        make_prompt_iterator(tiny_source(n), tokenizer, "plain", 2, 0, shard_index=4,
                             shard_count=4)


def test_state_restore_yields_exactly_the_remaining_batches(tokenizer):
    def build(**kw):
        args = dict(batch_size=5, seed=11, shard_index=1, shard_count=2, num_epochs=4)
        args.update(kw)
        return make_prompt_iterator(tiny_source(17), tokenizer, "plain", **args)

    reference = ids_of(build())
    it = build()
    head = ids_of(next(it) for _ in range(3))
    state = json.loads(json.dumps(it.get_state()))     # through a checkpoint file
    resumed = build()
    resumed.set_state(state)
    tail = ids_of(resumed)
    assert head + tail == reference and len(tail) == len(reference) - 3
    # a state from another pipeline is refused, not silently misapplied
    with pytest.raises(DataError, match="different pipeline"):
        build(seed=12).set_state(state)
    with pytest.raises(DataError, match="different pipeline"):
        build(batch_size=4).set_state(state)
    with pytest.raises(DataError, match="version"):
        build().set_state(dict(state, version=0))


def test_countdown_generator_is_seeded_and_solvable():
    source = generate_countdown(300, seed=42)
    assert generate_countdown(300, seed=42).examples == source.examples
    assert generate_countdown(300, seed=43).examples != source.examples
    sizes = collections.Counter(len(ex["numbers"]) for ex in source.examples)
    assert set(sizes) == {3, 4} and min(sizes.values()) > 100
    for ex in source.examples:
        assert all(1 <= n <= 100 for n in ex["numbers"]) and 1 <= ex["target"] <= 1000
        # the stored witness equation is a full-score answer for the reward function
        assert countdown(f"<answer>{ex['answer']}</answer>", ex["numbers"], ex["target"]) == 1.0
        assert ex["question"].startswith(f"Using the numbers {ex['numbers']}")
    assert len({ex["target"] for ex in source.examples}) > 150
