r"""Arithmetic and rule-based problems with exact answers, as few-shot prompts in a fixed format.

One line per problem: ``"{a} {symbol} {b} = {answer}\n"``. A prompt is ``shots`` solved lines of
the same operation followed by the query line up to ``"= "``, so the model's next tokens are the
answer's digits (Gemma's tokenizer writes every digit as its own token, after a lone space token
that the prompt already ends with) and then a newline.

Train, calibration and test are split by *unordered operand pair*: a pair {a, b} used by a
test problem never occurs in a calibration or training problem (of any operation) or in any
shot, and a calibration pair never occurs in training, a shot or the test split.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

Operation = Callable[[int, int], int]


def _lcm(a: int, b: int) -> int:
    return abs(a * b) // math.gcd(a, b) if a and b else 0


# name -> (symbol written in prompts, exact function, needs b >= 1, needs a >= b)
OPERATIONS: dict[str, tuple[str, Operation, bool, bool]] = {
    "add": ("+", lambda a, b: a + b, False, False),
    "sub": ("-", lambda a, b: a - b, False, True),
    "mul": ("*", lambda a, b: a * b, False, False),
    "div": ("//", lambda a, b: a // b, True, False),
    "mod": ("%", lambda a, b: a % b, True, False),
    "gcd": ("gcd", math.gcd, False, False),
    "lcm": ("lcm", _lcm, False, False),
    "and": ("&", lambda a, b: a & b, False, False),
    "or": ("|", lambda a, b: a | b, False, False),
    "xor": ("^", lambda a, b: a ^ b, False, False),
}
ALL_OPERATIONS: tuple[str, ...] = tuple(OPERATIONS)

# words and symbols a user may type for each operation (parse_problem)
_ALIASES: dict[str, str] = {
    "+": "add", "plus": "add", "add": "add",
    "-": "sub", "−": "sub", "minus": "sub", "sub": "sub",
    "*": "mul", "×": "mul", "x": "mul", "times": "mul", "mul": "mul",
    "//": "div", "/": "div", "÷": "div", "div": "div",
    "%": "mod", "mod": "mod",
    "gcd": "gcd", "lcm": "lcm",
    "&": "and", "and": "and", "|": "or", "or": "or", "^": "xor", "xor": "xor",
}  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """One problem ``first <operation> second = answer`` with its exact answer."""

    first: int
    operation: str
    second: int

    @property
    def answer(self) -> int:
        """The exact answer."""
        return solve(self.operation, self.first, self.second)

    def line(self, with_answer: bool = True) -> str:
        """The problem in the fixed prompt format."""
        head = f"{self.first} {OPERATIONS[self.operation][0]} {self.second} = "
        return f"{head}{self.answer}\n" if with_answer else head


def solve(operation: str, first: int, second: int) -> int:
    """The exact answer, or ValueError when the problem has none (division by zero, negative)."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; choose from {list(OPERATIONS)}")
    _, fn, needs_divisor, needs_order = OPERATIONS[operation]
    if first < 0 or second < 0:
        raise ValueError("operands must be non-negative integers")
    if needs_divisor and second == 0:
        raise ValueError(f"{operation} by zero has no answer")
    if needs_order and first < second:
        raise ValueError(f"{first} - {second} is negative: the tasks keep answers non-negative")
    return int(fn(first, second))


def valid(operation: str, first: int, second: int) -> bool:
    """Whether the problem has an answer in the task's rules."""
    try:
        solve(operation, first, second)
    except ValueError:
        return False
    return True


def max_answer(operations: tuple[str, ...], bound: int) -> int:
    """Largest answer any operation gives for operands in ``0..bound-1``."""
    top = bound - 1
    bits = (1 << top.bit_length()) - 1
    candidates = {"add": 2 * top, "sub": top, "mul": top * top, "div": top, "mod": top}
    candidates |= {"gcd": top, "lcm": top * top, "and": top, "or": bits, "xor": bits}
    return max(candidates[op] for op in operations)


def n_digits_for(operations: tuple[str, ...], bound: int) -> int:
    """Digits needed to write every operand and answer."""
    return len(str(max(max_answer(operations, bound), bound - 1)))


@dataclass(frozen=True)
class TaskSet:
    """Few-shot prompts for a train, a test and (optionally) a calibration split of problems."""

    train: list[Problem]
    test: list[Problem]
    train_prompts: list[str]
    test_prompts: list[str]
    calibration: list[Problem] = field(default_factory=list)
    calibration_prompts: list[str] = field(default_factory=list)


def generate_tasks(
    operations: tuple[str, ...],
    bound: int,
    n_train_per_operation: int,
    n_test_per_operation: int,
    shots: int = 2,
    seed: int = 0,
    test_fraction: float = 0.25,
    n_calibration_per_operation: int = 0,
) -> TaskSet:
    """Sample problems per operation with operands in ``0..bound-1``, split by operand pair.

    With ``n_calibration_per_operation`` a third pool of operand pairs (as large as the test
    pool) holds the calibration problems: data for choosing a gate's threshold that is disjoint
    from both the fitted maps' training data and the test split the gate is scored on.
    """
    for op in operations:
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}; choose from {list(OPERATIONS)}")
    if bound < 4:
        raise ValueError(f"the operand bound must be at least 4, got {bound}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(bound) for b in range(a, bound)]  # unordered pairs
    rng.shuffle(pairs)
    n_test_pairs = max(1, int(len(pairs) * test_fraction))
    n_calibration_pairs = n_test_pairs if n_calibration_per_operation > 0 else 0
    if n_test_pairs + n_calibration_pairs >= len(pairs):
        raise ValueError(
            f"operands below {bound} leave no training pairs; raise bound or lower test_fraction"
        )
    test_pairs = pairs[:n_test_pairs]
    calibration_pairs = pairs[n_test_pairs : n_test_pairs + n_calibration_pairs]
    train_pairs = pairs[n_test_pairs + n_calibration_pairs :]

    def sample(op: str, pool: list[tuple[int, int]], n: int, seen: set[Problem]) -> list[Problem]:
        out: list[Problem] = []
        for _ in range(200 * max(n, 1)):
            if len(out) == n:
                break
            low, high = rng.choice(pool)
            first, second = (high, low) if OPERATIONS[op][3] or rng.random() < 0.5 else (low, high)
            problem = Problem(first, op, second)
            if valid(op, first, second) and problem not in seen:
                seen.add(problem)
                out.append(problem)
        if len(out) < n:
            raise ValueError(f"only {len(out)} distinct {op} problems fit operands below {bound}; lower n")
        return out

    train: list[Problem] = []
    test: list[Problem] = []
    train_prompts: list[str] = []
    test_prompts: list[str] = []
    calibration: list[Problem] = []
    calibration_prompts: list[str] = []
    for op in operations:
        seen: set[Problem] = set()
        op_train = sample(op, train_pairs, n_train_per_operation, seen)
        op_test = sample(op, test_pairs, n_test_per_operation, seen)
        shot_pool = sample(op, train_pairs, max(shots * 4, 1), set()) if shots else []
        for problem in op_train:
            train.append(problem)
            train_prompts.append(few_shot_prompt(problem, _shots(rng, shot_pool, problem, shots)))
        for problem in op_test:
            test.append(problem)
            test_prompts.append(few_shot_prompt(problem, _shots(rng, shot_pool, problem, shots)))
        if n_calibration_per_operation > 0:  # pairs of their own: never in train, test or shots
            for problem in sample(op, calibration_pairs, n_calibration_per_operation, seen):
                calibration.append(problem)
                calibration_prompts.append(few_shot_prompt(problem, _shots(rng, shot_pool, problem, shots)))
    return TaskSet(
        train=train,
        test=test,
        train_prompts=train_prompts,
        test_prompts=test_prompts,
        calibration=calibration,
        calibration_prompts=calibration_prompts,
    )


def _shots(rng: random.Random, pool: list[Problem], query: Problem, shots: int) -> list[Problem]:
    candidates = [p for p in pool if p != query]
    return rng.sample(candidates, min(shots, len(candidates)))


def few_shot_prompt(query: Problem, shots: list[Problem]) -> str:
    """Solved shot lines followed by the query up to ``"= "``."""
    return "".join(shot.line() for shot in shots) + query.line(with_answer=False)


def default_shots(operation: str, bound: int, shots: int = 2, seed: int = 0) -> list[Problem]:
    """Fixed example problems for a typed query (drawn like training shots)."""
    rng = random.Random(seed + 7919)
    out: list[Problem] = []
    while len(out) < shots:
        first, second = rng.randrange(bound), rng.randrange(bound)
        if OPERATIONS[operation][3] and first < second:
            first, second = second, first
        if valid(operation, first, second) and Problem(first, operation, second) not in out:
            out.append(Problem(first, operation, second))
    return out


_NUMBER = r"(\d+)"
_INFIX = re.compile(
    rf"{_NUMBER}\s*(//|[-+*/%&|^×÷−x]|plus|minus|times|mod|div|and|or|xor|gcd|lcm)\s*{_NUMBER}"
)
_CALL = re.compile(rf"(gcd|lcm|mod|div|and|or|xor|add|sub|mul)\s*\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)")


def parse_problem(text: str) -> Problem:
    """Read a typed problem such as "What is 48 * 7?", "gcd(48, 18)" or "13 xor 7"."""
    lowered = text.strip().lower()
    call = _CALL.search(lowered)
    if call:
        name, first, second = call.group(1), int(call.group(2)), int(call.group(3))
    else:
        infix = _INFIX.search(lowered)
        if not infix:
            raise ValueError(
                f"could not read a problem from {text!r}: type two whole numbers and an operation, "
                "e.g. 'What is 48 * 7?', '96 // 7', '48 mod 5', 'gcd(48, 18)', '13 xor 7'"
            )
        first, name, second = int(infix.group(1)), infix.group(2), int(infix.group(3))
    operation = _ALIASES[name]
    solve(operation, first, second)  # raises a readable ValueError for invalid problems
    return Problem(first, operation, second)
