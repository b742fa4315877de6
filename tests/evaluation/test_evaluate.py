"""`evaluate` on scripted completions: pass@k / maj@k against hand-computed values, verdicts
against math-verify, batching and padding of the sampler calls, and `combine_reports`."""

import numpy as np
import pytest

from r1jax.evaluation import combine_reports, evaluate, make_problems
from r1jax.models import load_tokenizer
from r1jax.rewards import RewardPool, math_accuracy
from r1jax.sampling import SampleOutput

# question -> gold and four scripted completions (text, stopped by EOS?).
SCRIPT = {
    "What is 1/2 as a decimal?": ("\\frac{1}{2}", [
        ("So \\boxed{0.5}", True), ("\\boxed{\\frac12}", True), ("It is \\boxed{2}", True),
        ("I do not know", False)]),
    "What is 3+4?": ("7", [
        ("\\boxed{3}", True), ("The answer is \\boxed{3}.", True), ("\\boxed{7}", True),
        ("\\boxed{7.0}", True)]),
    "What is 6*7?": ("42", [
        ("<think>6*7</think><answer>42</answer>", True), ("\\boxed{41}", True),
        ("\\boxed{41}", False), ("\\boxed{41}", True)]),
}
QUESTIONS = list(SCRIPT)
# By hand, per problem (auto extraction: answer tag, else last box):
#   verdicts [1,1,0,0], [0,0,1,1], [1,0,0,0]; answers 1/2,1/2,2,- | 3,3,7,7 | 42,41,41,41.
#   pass@1 = (2/4 + 2/4 + 1/4) / 3 = 5/12
#   pass@2 = 1 - C(4-c, 2) / C(4, 2): 5/6, 5/6, 1/2 -> 13/18;  pass@4 = 1 (every c >= 1)
#   maj@1 = first sample right: 1, 0, 1 -> 2/3
#   maj@2 = 1/2 wins; 3 wins; 42-41 tie goes to the first (42): 1, 0, 1 -> 2/3
#   maj@4 = 1/2 (2 votes) wins; 3-7 tie goes to 3; 41 wins: 1, 0, 0 -> 1/3
EXPECTED = {"pass@1": 5 / 12, "pass@2": 13 / 18, "pass@4": 1.0, "maj@1": 2 / 3,
            "maj@2": 2 / 3, "maj@4": 1 / 3, "truncation_rate": 2 / 12,
            "no_answer_rate": 1 / 12}


class ScriptedSampler:
    """Answers each prompt with SCRIPT's completions; records every call."""

    def __init__(self, tokenizer, width=40):
        self.tokenizer = tokenizer
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.width = width
        self.calls = []

    def generate(self, prompt_ids, *, n, max_new_tokens, temperature, top_p, top_k, seed,
                 params):
        self.calls.append(dict(prompts=len(prompt_ids), n=n, seed=seed,
                               temperature=temperature, top_p=top_p, top_k=top_k))
        rows = []
        for ids in prompt_ids:
            text = self.tokenizer.decode(ids)
            question = next(q for q in QUESTIONS if q in text)
            for completion, stopped in SCRIPT[question][1][:n]:
                toks = self.tokenizer.encode(completion, add_special_tokens=False)
                rows.append((toks + [self.eos] if stopped else toks, stopped))
        tokens = np.zeros((len(rows), self.width), np.int32)
        for i, (toks, _) in enumerate(rows):
            tokens[i, :len(toks)] = toks
        zeros = np.zeros(tokens.shape, np.float32)
        return SampleOutput(tokens=tokens, lengths=np.array([len(t) for t, _ in rows]),
                            finish_reason=np.array([0 if s else 1 for _, s in rows]),
                            logprobs=zeros, sampling_logprobs=zeros,
                            prompt_index=np.repeat(np.arange(len(prompt_ids)), n),
                            prompt_ids=[list(p) for p in prompt_ids], stats={})


@pytest.fixture(scope="module")
def tokenizer(qwen_tokenizer_dir):
    return load_tokenizer(qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def problems(tokenizer):
    return make_problems(QUESTIONS, [SCRIPT[q][0] for q in QUESTIONS], tokenizer,
                         template="qwen_math", ids=["half", "seven", "fortytwo"])


def test_make_problems_templates_and_tokenizes(tokenizer, problems):
    assert [p["id"] for p in problems] == ["half", "seven", "fortytwo"]
    for p, question in zip(problems, QUESTIONS):
        messages = [{"role": "system", "content": "Please reason step by step, and put your "
                     "final answer within \\boxed{}."}, {"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        assert p["prompt_text"] == text and p["answer"] == SCRIPT[question][0]
        assert p["prompt_ids"] == tokenizer.encode(text, add_special_tokens=False)
    short = make_problems(QUESTIONS, ["1", "2", "3"], tokenizer, template="plain",
                          max_prompt_tokens=7)
    assert [p["question"] for p in short] == ["What is 3+4?", "What is 6*7?"]
    with pytest.raises(ValueError, match="2 answers"):
        make_problems(QUESTIONS, ["1", "2"], tokenizer)


def test_scripted_completions_give_hand_computed_pass_and_maj(tokenizer, problems):
    sampler = ScriptedSampler(tokenizer)
    result = evaluate(sampler, tokenizer, problems, n=4, temperature=0.7, top_p=0.9,
                      seed=11, batch_size=2)
    report = result.report
    for key, value in EXPECTED.items():
        assert report[key] == pytest.approx(value, abs=1e-12), key
    assert report["problems"] == 3 and report["samples_per_problem"] == 4
    lengths = [len(tokenizer.encode(c, add_special_tokens=False)) + s
               for q in QUESTIONS for c, s in SCRIPT[q][1]]
    assert report["mean_response_tokens"] == pytest.approx(np.mean(lengths))
    assert report["generated_tokens"] == sum(lengths) and report["reward_failures"] == 0
    # Two calls of batch_size prompts (the last padded with a copy), seed offset per call.
    assert [c["prompts"] for c in sampler.calls] == [2, 2]
    assert [c["seed"] for c in sampler.calls] == [11, 13]
    assert all(c["n"] == 4 and c["temperature"] == 0.7 and c["top_p"] == 0.9
               for c in sampler.calls)
    assert len(result.samples) == 12
    for s, (question, (completion, stopped)) in zip(result.samples, [
            (q, c) for q in QUESTIONS for c in SCRIPT[q][1]]):
        gold = SCRIPT[question][0]
        assert s["completion"] == completion  # the EOS token is not in the text
        assert s["gold"] == gold and s["truncated"] == (not stopped)
        assert s["correct"] == (math_accuracy(completion, gold) == 1.0)
        assert question in s["prompt"]
    assert [s["extracted"] for s in result.samples[:4]] == ["0.5", "\\frac12", "2", None]
    assert result.samples[8]["extracted"] == "42"


def test_extraction_follows_the_pools_accuracy_function(tokenizer, problems):
    with RewardPool([("accuracy", 1.0, {"mode": "boxed"})], num_workers=1) as pool:
        result = evaluate(ScriptedSampler(tokenizer), tokenizer, problems, pool, n=4)
    # Boxed-only grading ignores the <answer> tag: problem 3 has no right sample left.
    assert result.report["extraction_mode"] == "boxed"
    assert result.samples[8]["extracted"] is None and not result.samples[8]["correct"]
    assert result.report["pass@1"] == pytest.approx((2 / 4 + 2 / 4 + 0) / 3)
    assert result.report["maj@2"] == pytest.approx(1 / 3)  # 41 now votes alone in problem 3


def test_bad_arguments_raise(tokenizer, problems):
    with pytest.raises(ValueError, match="no problems"):
        evaluate(ScriptedSampler(tokenizer), tokenizer, [], n=1)
    with pytest.raises(ValueError, match="n and batch_size"):
        evaluate(ScriptedSampler(tokenizer), tokenizer, problems, n=0)


def test_combine_reports_weights_by_problems():
    a = {"problems": 10, "samples_per_problem": 2, "pass@1": 0.2, "pass@2": 0.3,
         "maj@2": 0.1, "truncation_rate": 0.5, "seconds": 3.0}
    b = {"problems": 30, "samples_per_problem": 2, "pass@1": 0.6, "pass@2": 0.7,
         "maj@2": 0.5, "truncation_rate": 0.1, "seconds": 9.0}
    overall = combine_reports({"a": a, "b": b})
    assert overall["problems"] == 40 and overall["samples"] == 80
    assert overall["weighted"]["pass@1"] == pytest.approx((0.2 * 10 + 0.6 * 30) / 40)
    assert overall["macro"]["pass@1"] == pytest.approx(0.4)
    assert overall["weighted"]["truncation_rate"] == pytest.approx((5 + 3) / 40)
    assert overall["macro"]["maj@2"] == pytest.approx(0.3)
    assert "seconds" not in overall["weighted"]
    with pytest.raises(ValueError):
        combine_reports({})
