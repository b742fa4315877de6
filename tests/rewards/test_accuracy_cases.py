"""math_accuracy on real benchmark problems: the gold comes from the files in ../shared/data.

Each case is (benchmark, problem id, completion, expected verdict). The expected verdicts are
what is mathematically right; every one of them also agrees with math-verify 0.9's decision
(the accuracy reward is math-verify plus our extraction), which is what this table pins down.
"""

import pytest

from r1jax.data import load_benchmark
from r1jax.rewards import math_accuracy

B = "\\boxed"
CASES = [
    # Equivalent forms: fractions, decimals, \dfrac.
    ("math500", "test/algebra/2584.json", B + "{\\dfrac{14}{3}}", True),
    ("math500", "test/algebra/2584.json", B + "{14/3}", True),
    ("math500", "test/algebra/2584.json", B + "{4.67}", False),  # rounded: not equal
    ("math500", "test/algebra/2584.json", B + "{\\frac{3}{14}}", False),
    ("math500", "test/algebra/1265.json", B + "{1.5}", True),
    ("math500", "test/prealgebra/1558.json", B + "{\\frac{5}{4}}", True),
    ("math500", "test/prealgebra/572.json", B + "{\\frac{3}{20}}", True),
    ("math500", "test/prealgebra/572.json", B + "{0.51}", False),
    ("math500", "test/precalculus/1105.json", B + "{-\\pi/6}", True),
    ("math500", "test/precalculus/1105.json", B + "{\\frac{\\pi}{6}}", False),
    # Degrees, assignments, equations.
    ("math500", "test/precalculus/927.json", B + "{90}", True),
    ("math500", "test/precalculus/927.json", B + "{90^{\\circ}}", True),
    ("math500", "test/geometry/183.json", B + "{35^\\circ}", False),
    ("math500", "test/algebra/2193.json", B + "{5}", True),
    ("math500", "test/algebra/2193.json", B + "{x = 5}", True),
    ("math500", "test/algebra/2193.json", B + "{x=-5}", False),
    ("math500", "test/precalculus/323.json", B + "{y=2x+3}", True),
    ("math500", "test/precalculus/323.json", B + "{y = 3x + 2}", False),
    # Intervals and unions.
    ("math500", "test/intermediate_algebra/558.json", B + "{(3, 4]}", True),
    ("math500", "test/intermediate_algebra/558.json", B + "{[3,4]}", False),
    ("math500", "test/intermediate_algebra/558.json", B + "{(3,4)}", False),
    ("math500", "test/algebra/2043.json", B + "{(-\\infty,2)\\cup(3,\\infty)}", True),
    ("math500", "test/algebra/2043.json", B + "{(3,\\infty)\\cup(-\\infty,2)}", True),
    ("math500", "test/algebra/2043.json", B + "{(-\\infty,2]\\cup[3,\\infty)}", False),
    ("math500", "test/algebra/2486.json", B + "{(0.6, 8/3]}", True),
    # Sets of solutions, tuples.
    ("math500", "test/intermediate_algebra/1388.json", B + "{-2, 1}", True),
    ("math500", "test/intermediate_algebra/1388.json", B + "{1}", False),
    ("math500", "test/intermediate_algebra/428.json", B + "{7, 3, 5}", True),
    ("math500", "test/intermediate_algebra/428.json", B + "{3, 5}", False),
    ("math500", "test/precalculus/807.json", B + "{(3, \\frac{\\pi}{2})}", True),
    ("math500", "test/precalculus/807.json", B + "{(3, \\pi)}", False),
    # Thousands separators and currency.
    ("math500", "test/counting_and_probability/737.json", B + "{58500}", True),
    ("math500", "test/counting_and_probability/737.json", B + "{58,000}", False),
    ("math500", "test/algebra/2626.json", B + "{32348}", True),
    ("math500", "test/algebra/2626.json", B + "{\\$32,348}", True),
    ("math500", "test/prealgebra/1203.json", B + "{36}", True),
    ("math500", "test/prealgebra/1044.json", B + "{5.4}", True),
    ("math500", "test/prealgebra/1003.json", B + "{\\frac{270}{7}}", True),
    # Text answers, complex numbers, matrices, surds, polynomials.
    ("math500", "test/algebra/1349.json", B + "{\\text{Evelyn}}", True),
    ("math500", "test/prealgebra/105.json", B + "{\\text{west}}", False),
    ("math500", "test/precalculus/819.json", B + "{\\text{(C)}}", True),
    ("math500", "test/precalculus/819.json", B + "{\\text{(D)}}", False),
    ("math500", "test/precalculus/990.json", B + "{6-5i}", True),
    ("math500", "test/precalculus/990.json", B + "{6+5i}", False),
    ("math500", "test/precalculus/263.json", B + "{\\begin{pmatrix}-2\\\\-14\\\\-7\\end{pmatrix}}",
     True),
    ("math500", "test/precalculus/263.json", B + "{\\begin{pmatrix}-2\\\\14\\\\-7\\end{pmatrix}}",
     False),
    ("math500", "test/prealgebra/1302.json", B + "{11\\sqrt{2}}", True),
    ("math500", "test/prealgebra/1302.json", B + "{\\sqrt{242}}", True),
    ("math500", "test/algebra/2036.json", B + "{3\\sqrt{12}}", False),
    ("math500", "test/intermediate_algebra/1217.json", B + "{-1 + x - x^2 + x^3 - x^4 + x^5}",
     True),
    ("math500", "test/intermediate_algebra/1217.json", B + "{x^5 + x^4 + x^3 - x^2 + x - 1}",
     False),
    # Structure of the completion: several boxes (the last counts), none, truncated, tags.
    ("math500", "test/algebra/2584.json", "First \\boxed{3}. No wait: " + B + "{\\frac{14}{3}}",
     True),
    ("math500", "test/algebra/2584.json", B + "{\\frac{14}{3}}? No, it is " + B + "{3}.", False),
    ("math500", "test/algebra/2584.json", "The answer is 14/3.", False),  # no box, no tag
    ("math500", "test/algebra/2584.json", "so the answer is " + B + "{\\frac{14}{", False),
    ("math500", "test/algebra/2584.json", B + "{3} and then " + B + "{\\frac{14}{3", False),
    ("math500", "test/algebra/2584.json",
     "<think>14 over 3</think> <answer> \\frac{14}{3} </answer>", True),
    ("math500", "test/algebra/2584.json", "<think>ok</think><answer>" + B + "{14/3}</answer>",
     True),
    ("math500", "test/algebra/2584.json", B + "{14/3} <answer> 3 </answer>", False),
    # AIME: leading zeros (string answers) and ints; AMC: float answers.
    ("aime24", "67", B + "{25}", True),
    ("aime24", "67", B + "{025}", True),
    ("aime24", "67", B + "{250}", False),
    ("aime24", "67", B + "{52}", False),
    ("aime24", "75", B + "{73}", True),
    ("aime25", "0", B + "{70}", True),
    ("aime25", "0", B + "{07}", False),
    ("amc23", "0", B + "{27}", True),
    ("amc23", "0", B + "{27.5}", False),
    # GSM8K: answers after ####, with thousands separators and signs.
    ("gsm8k", "gsm8k-147", B + "{2,125}", True),
    ("gsm8k", "gsm8k-147", B + "{2125}", True),
    ("gsm8k", "gsm8k-147", B + "{2.125}", False),
    ("gsm8k", "gsm8k-490", B + "{-10}", True),
    ("gsm8k", "gsm8k-490", B + "{10}", False),
    # Minerva: the gold is the last box of the worked solution.
    ("minerva_math", "0", B + "{1.6}", True),
    ("minerva_math", "0", B + "{16}", False),
    # OlympiadBench: final_answer lists, several answers, tuples, expressions.
    ("olympiadbench", "1664", B + "{69, 84}", True),
    ("olympiadbench", "1664", B + "{69}", False),
    ("olympiadbench", "1737", B + "{(6,3),(9,3),(9,5),(54,5)}", True),
    ("olympiadbench", "1737", B + "{(6,3),(9,3),(9,5)}", False),
    ("olympiadbench", "1612", B + "{2^{1009}}", True),
    ("olympiadbench", "1612", B + "{2^{1008}}", False),
    ("olympiadbench", "1610", B + "{\\frac{1}{2(n+1)}}", True),
    ("olympiadbench", "1610", B + "{\\frac{1}{2n+1}}", False),
    ("olympiadbench", "1614", B + "{2(n-1)}", True),
]


@pytest.fixture(scope="module")
def golds(data_dir):
    names = sorted({c[0] for c in CASES})
    return {name: {p["id"]: p["gold"] for p in load_benchmark(name, data_dir=data_dir)}
            for name in names}


def test_table_is_large_and_balanced():
    assert len(CASES) >= 60
    assert sum(c[3] for c in CASES) >= 25 and sum(not c[3] for c in CASES) >= 25


@pytest.mark.parametrize("benchmark,problem_id,completion,expected", CASES,
                         ids=[f"{c[0]}:{c[1]}:{i}" for i, c in enumerate(CASES)])
def test_verdict(golds, benchmark, problem_id, completion, expected):
    gold = golds[benchmark][problem_id]
    assert math_accuracy(completion, gold) == (1.0 if expected else 0.0), (gold, completion)
