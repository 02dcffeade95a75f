"""Math accuracy: the final answer checked against ``row["answer"]`` with math-verify.

The answer is taken from the last ``<answer>...</answer>`` when there is one (inside it, a
``\\boxed{}`` wins over the bare text), else from the ``\\boxed{...}`` answers of the whole
completion (nested braces handled). Equivalence is math-verify's (``parse`` / ``verify``): integers,
fractions, decimals, percents, LaTeX, intervals, sets, equations, text units.

Departures from a plain "last boxed" check, to keep the reward hard to game (R1 paper §5: reward
hacking wherever the verifier is soft):

- several *different* boxed answers score 0 (hedging), as does an answer that appears only in the
  reasoning (no ``\\boxed{}`` and no ``<answer>`` tag);
- a list of candidates (``1, 2, 3, ...``) is a tuple/set to math-verify and never equals a scalar;
- answers longer than :data:`MAX_ANSWER_CHARS`, and expressions that could make sympy compute for
  ever (towers of powers, big factorials), are compared as normalised strings, not symbolically;
- every call is time-bounded whatever thread makes it: in the main thread by math-verify's own
  signal-based timeouts; in any other thread (where signals cannot be used) the check runs in a helper
  process (:class:`_Verifier`) that is killed and counted as "not equivalent" after
  :data:`THREAD_TIMEOUT_S`.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import re
import threading

from megatron_r1.rewards import register

MAX_ANSWER_CHARS = 300
_TIMEOUT_S = 2
THREAD_TIMEOUT_S = 10.0
"""Off the main thread: seconds one check may take in the helper process before it is killed."""
_STARTUP_TIMEOUT_S = 120.0
log = logging.getLogger(__name__)
_BRACE_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\{|\}")
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
# A power inside an exponent (towers), a huge exponent, a factorial of a big number or expression.
_EXPENSIVE_RE = re.compile(
    r"\^\s*\{[^}]*(\^|\*\*)|\*\*[^*]*\*\*|(\^|\*\*)\s*\{?\s*\d{5,}|\d{4,}\s*!|[)}]\s*!"
)


def find_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, in order of their opening.

    One pass over the braces (a stack of open groups), so deep nesting costs linear time.
    """
    found: list[tuple[int, str]] = []
    stack: list[tuple[bool, int]] = []  # (is a boxed group, content start)
    for match in _BRACE_RE.finditer(text):
        token = match.group()
        if token == "}":
            if stack:
                boxed, start = stack.pop()
                if boxed:
                    end = match.start()
                    # Over-long contents are never a valid answer: keep a unique marker, not a copy.
                    too_long = end - start > 4 * MAX_ANSWER_CHARS
                    found.append((start, f"\0{start}" if too_long else text[start:end].strip()))
        else:
            stack.append((token != "{", match.end()))
    return [content for _, content in sorted(found)]


def extract_final_answer(completion: str) -> str | None:
    """The final answer of ``completion``, or None when it has none or hedges between several."""
    tags = _ANSWER_RE.findall(completion)
    region = tags[-1] if tags else completion
    boxed = find_boxed(region)
    if boxed:
        if len({re.sub(r"\s+", "", b) for b in boxed}) > 1:
            return None
        answer = boxed[-1]
    elif tags:
        answer = region.strip()
    else:
        return None
    return answer or None


def _normalise(text: str) -> str:
    text = re.sub(r"\\(?:d|t)frac", r"\\frac", text)
    text = re.sub(r"\\(?:left|right|,|;|!|\s)", "", text)
    return re.sub(r"\s+", "", text).strip("$.").lower()


def _expensive(text: str) -> bool:
    """True for inputs that can keep sympy busy for a long time (towers, big factorials)."""
    return len(text) > MAX_ANSWER_CHARS or bool(_EXPENSIVE_RE.search(text))


def _timeout() -> int:
    # math-verify's timeouts use SIGALRM, which only the main thread may install.
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else 0


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    from math_verify import parse

    return parse(f"\\boxed{{{gold}}}", parsing_timeout=_timeout())


def answers_equivalent(gold: str, answer: str) -> bool:
    """True when ``answer`` is mathematically the same as ``gold`` (math-verify, bounded inputs and time)."""
    gold, answer = str(gold).strip(), str(answer).strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS or "\0" in answer:
        return False
    if _normalise(gold) == _normalise(answer):
        return True
    if _expensive(gold) or _expensive(answer):
        return False
    if threading.current_thread() is not threading.main_thread():
        return _VERIFIER.check(gold, answer)
    return _math_verify(gold, answer)


def _math_verify(gold: str, answer: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    answer_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=_timeout())
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=_timeout()))


def _verifier_main(conn) -> None:
    """The helper process: checks pairs in its main thread, where math-verify's own timeouts work."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _math_verify("1", "1")  # imports done before "ready"
    conn.send("ready")
    while True:
        try:
            pair = conn.recv()
        except EOFError:
            return
        if pair is None:
            return
        try:
            conn.send(_math_verify(*pair))
        except Exception:
            conn.send(False)


class _Verifier:
    """math-verify in a helper process, for callers off the main thread: each check has
    :data:`THREAD_TIMEOUT_S`; a check that runs past it (sympy stuck in C code cannot be interrupted) gets
    the process killed — it is restarted on the next call — and counts as not equivalent. Thread-safe (one
    check at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process = None
        self._conn = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("forkserver")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_verifier_main, args=(child,), daemon=True)
        self._process.start()
        child.close()
        if not (self._conn.poll(_STARTUP_TIMEOUT_S) and self._conn.recv() == "ready"):
            self.close()
            raise RuntimeError("the math-verify helper process did not start")

    def close(self) -> None:
        if self._process is not None:
            if self._process.pid is not None:
                self._process.kill()
                self._process.join(5)
            self._conn.close()
        self._process = self._conn = None

    def check(self, gold: str, answer: str) -> bool:
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self.close()
                self._start()
            try:
                self._conn.send((gold, answer))
                if self._conn.poll(THREAD_TIMEOUT_S):
                    return bool(self._conn.recv())
            except (EOFError, OSError):
                pass
            log.warning("math-verify took over %.0f s on %r; counted as wrong", THREAD_TIMEOUT_S, answer[:80])
            self.close()
            return False


_VERIFIER = _Verifier()


@register("math", needs=("answer",))
def math_reward(completion: str, row: dict) -> float:
    """1.0 when the final answer equals ``row["answer"]`` (math-verify), else 0.0."""
    answer = extract_final_answer(completion)
    if answer is None:
        return 0.0
    return 1.0 if answers_equivalent(str(row["answer"]), answer) else 0.0
