r"""Math answers as the Qwen2.5-Math evaluation harness reads and compares them.

The PriFT paper's math numbers come from that harness (QwenLM/Qwen2.5-Math, `evaluation/`), so this
module follows its code rule by rule, in its order:
- extraction (`parser.py::extract_answer`): the Minerva "final answer is $x$. I hope" sentence; else
  the last `\boxed{}`; else the text after the last "he answer is"; else after the last "final answer
  is"; else after the first "答案是"; else (its default) the last number;
- normalisation (`parser.py::strip_string`): units, `\text{}`, `\dfrac`, `\left`, `$`, percent signs,
  trailing zeros, `x=` prefixes, `a/b` -> `\frac{a}{b}`, ... applied to the gold once and to the
  prediction twice (`extract_answer`, then `run_execute`);
- equivalence (`grader.py::math_equal`): case-insensitive string equality; numbers compared with a
  relative tolerance of 1e-4, the gold also accepted divided or multiplied by 100 (percentages);
  brackets, tuples and matrices element by element; equations; then symbolic equality.

Where this module departs from the harness (each difference is listed in
docs/evaluation.md "Math scoring: the paper's protocol, strict and flexible"):
- the last-number fallback is not part of extraction here: `extract_final` returns None instead,
  and the caller decides (`evals.scoring.score_math`: only the flexible metric uses it, and never on
  a completion cut by the length limit);
- a GSM8K answer line `#### <number>` (lm-evaluation-harness's strict-match pattern) counts as a
  final answer when no rule of the harness applies;
- an unclosed `\boxed{` (a completion cut inside the box) is no answer, where the harness takes the
  partial content;
- symbolic equality parses with latex2sympy only (latex2sympy2_extended, the maintained fork of the
  harness's latex2sympy2): the harness tries sympy's `parse_latex` first (it needs antlr 4.11) and
  `parse_expr` second (Python `eval` of model output: not run here);
- number words are not turned into digits (the harness uses the word2number package) and the
  multiple-choice branch of `math_equal` is left out (no math task here has letter answers).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- extraction (parser.py::extract_answer)

_GSM8K_LINE = re.compile(r"####\s*(-?[0-9.,]+)")
_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")


def last_boxed(text: str) -> str | None:
    r"""Content of the last `boxed` (`\boxed{...}` with nested braces; `\boxed 5` up to the next `$`),
    as the harness's `find_box` reads it; None when there is none, an unbraced one is empty, or its
    braces never close (the completion was cut off inside the box). An empty `\boxed{}` gives '': the
    harness takes it as the stated answer (wrong), not as a completion without one.

    >>> last_boxed(r"first \boxed{1}, then \boxed{\frac{a}{b}}")
    '\\frac{a}{b}'
    """
    start = text.rfind("boxed")
    if start < 0:
        return None
    rest = text[start + len("boxed") :]
    if not rest.startswith("{"):
        return rest.split("$")[0].strip() or None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i]
    return None


def extract_final(text: str) -> tuple[str | None, str | None]:
    """(the final answer as written, the rule that found it), or (None, None): the harness's
    extraction rules without its last-number fallback, then the `####` answer line."""
    text = text.replace("\u043a\u0438", "")  # the harness drops "ки" (a step tag of PRM training data)
    if "final answer is $" in text and "$. I hope" in text:
        return text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip(), "minerva"
    if "boxed" in text:  # the harness takes this branch whenever the word occurs, box or not
        answer = last_boxed(text)
        return (answer, "boxed") if answer is not None else (None, None)
    if "he answer is" in text:
        return text.split("he answer is")[-1].strip(), "answer is"
    if "final answer is" in text:
        return text.split("final answer is")[-1].strip(), "final answer is"
    if "答案是" in text:
        return text.split("答案是")[1].strip().split("\n\n")[0].strip(), "答案是"
    lines = _GSM8K_LINE.findall(text)
    if lines:
        return lines[-1], "####"
    return None, None


def last_number(text: str) -> str | None:
    """The harness's fallback: the last number in the text, thousands separators removed."""
    numbers = _LAST_NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


def clean_prediction(answer: str) -> str:
    """An extracted answer as the harness compares it: line breaks, a leading ':' and a trailing '.'
    or '/' removed, then `strip_string` twice (`extract_answer`, then `run_execute`)."""
    answer = re.sub(r"\n\s*", "", answer)
    answer = answer.removeprefix(":").removesuffix(".").removesuffix("/")
    return strip_string(strip_string(answer))


# ---------------------------------------------------------------- normalisation (parser.py::strip_string)

# Units the harness deletes (mostly from MathQA), each with and without a trailing "s", in its order.
# They are regular expressions there, unescaped ("a ." matches "a" and any character): kept so.
_UNITS = (
    'east', 'degree', 'mph', 'kmph', 'ft', 'm sqaure', ' m east', 'sq m', 'deg', 'mile', 'q .', 'monkey',
    'prime', 'ratio', 'profit of rs', 'rd', 'o', 'gm', 'p . m', 'lb', 'tile', 'per', 'dm', 'lt', 'gain',
    'ab', 'way', 'west', 'a .', 'b .', 'c .', 'd .', 'e .', 'f .', 'g .', 'h .', 't', 'a', 'h', 'no change',
    'men', 'soldier', 'pie', 'bc', 'excess', 'st', 'inches', 'noon', 'percent', 'by', 'gal', 'kmh', 'c',
    'acre', 'rise', 'a . m', 'th', 'π r 2', 'sq', 'mark', 'l', 'toy', 'coin', 'sq . m', 'gallon', '° f',
    'profit', 'minw', 'yr', 'women', 'feet', 'am', 'pm', 'hr', 'cu cm', 'square', 'v â € ™', 'are', 'rupee',
    'rounds', 'cubic', 'cc', 'mtr', 's', 'ohm', 'number', 'kmph', 'day', 'hour', 'minute', 'min', 'second',
    'man', 'woman', 'sec', 'cube', 'mt', 'sq inch', 'mp', '∏ cm ³', 'hectare', 'more', 'sec', 'unit',
    'cu . m', 'cm 2', 'rs .', 'rs', 'kg', 'g', 'month', 'km', 'm', 'cm', 'mm', 'apple', 'liter', 'loss',
    'yard', 'pure', 'year', 'increase', 'decrease', 'd', 'less', 'Surface', 'litre', 'pi sq m', 's .',
    'metre', 'meter', 'inch',
)
# Each with the literal text it cannot match without (up to its first "."): a substring test skips
# most of the ~260 expressions, with the same result.
_UNIT_PATTERNS = tuple(
    (u.split(".")[0], re.compile(r"(^|\W)" + u + r"($|\W)")) for u in _UNITS + tuple(u + "s" for u in _UNITS)
)


def _fix_fracs(string: str) -> str:
    r"""`\frac12` -> `\frac{1}{2}`, `\frac1b` -> `\frac{1}{b}` (harness `_fix_fracs`)."""
    parts = string.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{"):
            out += part
        elif len(part) < 2:
            return string
        elif part[1] != "{":
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            out += "{" + part[0] + "}" + part[1:]
    return out


def _fix_a_slash_b(string: str) -> str:
    r"""`3/4` -> `\frac{3}{4}` for integers only (harness `_fix_a_slash_b`)."""
    parts = string.split("/")
    if len(parts) != 2:
        return string
    try:
        a = parts[0] if "sqrt" in parts[0] else int(parts[0])
        b = parts[1] if "sqrt" in parts[1] else int(parts[1])
    except ValueError:
        return string
    if string != f"{a}/{b}":
        return string
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


@functools.lru_cache(maxsize=65536)
def strip_string(string: str, skip_unit: bool = False) -> str:
    """The harness's answer normalisation, step by step in its order (`skip_unit`: the harness keeps
    units for carp_en and minerva_math only). Cached: it may run a few hundred regular expressions."""
    s = str(string).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s).replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    no_text_tail = re.sub(r"\\text{.*?}$", "", s).strip()  # a trailing \text{...} is a unit
    if no_text_tail != "":
        s = no_text_tail
    if not skip_unit:
        for _ in range(2):
            for literal, pattern in _UNIT_PATTERNS:
                if literal in s:
                    s = pattern.sub(r"\1\2", s) or s
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for key in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        s = s.replace(key, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox{.*?}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)  # 12.0 -> 12, 3.00x -> 3x
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 5" -> "5"
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s).replace(" ", "")
    return _fix_a_slash_b(_fix_fracs(s))


# ---------------------------------------------------------------- equivalence (grader.py::math_equal)


def parse_digits(text: str) -> float | None:
    """A plain number (thousands separators allowed; "50%" or "50\\%" -> 0.5), else None."""
    text = text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        pass
    if text.endswith("%"):
        try:
            return float(text[:-1].removesuffix("\\")) / 100
        except ValueError:
            pass
    return None


def _str_to_pmatrix(text: str) -> str:
    """`{1,2},{3,4}` -> one pmatrix per braced group (harness `str_to_pmatrix`)."""
    groups = re.findall(r"\{.*,.*\}", text.strip())
    return ", ".join(r"\begin{pmatrix}" + g.strip("{}").replace(",", "\\") + r"\end{pmatrix}" for g in groups)


_BEGIN, _END = "\\begin{pmatrix}", "\\end{pmatrix}"


def _is_matrix(text: str) -> bool:
    return (text.startswith(("\\begin{pmatrix}", "\\begin{bmatrix}"))
            and text.endswith(("\\end{pmatrix}", "\\end{bmatrix}")))


def _matrix_cells(text: str) -> list[list[str]]:
    rows = [row.strip() for row in text[len(_BEGIN) : -len(_END)].split("\\\\") if row.strip()]
    return [row.split("&") for row in rows]


def _matrices_equal(prediction: str, reference: str) -> bool:
    pred, ref = _matrix_cells(prediction), _matrix_cells(reference)
    return len(pred) == len(ref) and all(
        len(p) == len(r) and all(math_equal(a, b) for a, b in zip(p, r)) for p, r in zip(pred, ref)
    )


def math_equal(prediction: str, reference: str) -> bool:
    r"""Whether a normalised prediction equals a normalised gold answer, by the harness's rules in
    its order (module docstring).

    >>> math_equal("50", "0.5")   # the harness also accepts the gold times or divided by 100
    True
    """
    if prediction.strip().lower() == reference.strip().lower():
        return True
    pred_num, ref_num = parse_digits(prediction), parse_digits(reference)
    if pred_num is not None and ref_num is not None:
        return any(math.isclose(r, pred_num, rel_tol=1e-4) for r in (ref_num / 100, ref_num, ref_num * 100))
    if not prediction:
        return False
    prediction, reference = prediction.strip(), reference.strip()
    if "pmatrix" in prediction and "pmatrix" not in reference:
        reference = _str_to_pmatrix(reference)
    pred_bare, ref_bare = prediction, reference
    if (prediction.startswith("[") and prediction.endswith("]") and not reference.startswith("(")) or (
        prediction.startswith("(") and prediction.endswith(")") and not reference.startswith("[")
    ):
        pred_bare, ref_bare = pred_bare.strip("[]()"), ref_bare.strip("[]()")
    pred_bare, ref_bare = (re.sub(r"[{}()]", "", s) for s in (pred_bare, ref_bare))
    if pred_bare.lower() == ref_bare.lower():
        return True
    if re.match(r"(\(|\[).+(\)|\])", prediction) and re.match(r"(\(|\[).+(\)|\])", reference):
        pred_parts, ref_parts = prediction[1:-1].split(","), reference[1:-1].split(",")
        if len(pred_parts) == len(ref_parts) and all(math_equal(p, r) for p, r in zip(pred_parts, ref_parts)):
            return True
    if _is_matrix(prediction) and _is_matrix(reference) and _matrices_equal(prediction, reference):
        return True
    if prediction.count("=") == 1 and reference.count("=") == 1:
        pred = "{} - ({})".format(*(side.strip() for side in prediction.split("=")))
        ref = "{} - ({})".format(*(side.strip() for side in reference.split("=")))
        if symbolic_equal(pred, ref) or symbolic_equal(f"-({pred})", ref):
            return True
    elif prediction.count("=") == 1 and len(prediction.split("=")[0].strip()) <= 2 and "=" not in reference:
        if math_equal(prediction.split("=")[1], reference):
            return True
    elif reference.count("=") == 1 and len(reference.split("=")[0].strip()) <= 2 and "=" not in prediction:
        if math_equal(prediction, reference.split("=")[1]):
            return True
    return symbolic_equal(prediction, reference)


def _to_sympy(text: str):
    """The harness's `_parse`: the expression as sympy, else the text itself (a failed parse is a
    string, compared as one). Only latex2sympy: the harness's other two parsers are sympy's
    `parse_latex` (needs antlr 4.11, not in this stack) and `parse_expr`, which runs Python `eval` on
    the model's text."""
    from latex2sympy2_extended import latex2sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig

    config = ConversionConfig(lowercase_symbols=False)  # the harness's latex2sympy keeps the case
    for candidate in (text.replace("\\\\", "\\"), text):
        try:
            return latex2sympy(candidate, normalization_config=None, conversion_config=config)
        except Exception:  # noqa: BLE001 -- any parse failure means "compare as text", as in the harness
            continue
    return text


def _sympy_equal(a: str, b: str) -> bool:
    """The harness's `symbolic_equal`: same printout or value; zero difference; equations equal up
    to sign; numerically close (rel. 1e-4); matrices equal after rounding to 3 decimals. Each check
    that raises (a string, a shape mismatch) is a no, as there."""
    from sympy import N, simplify

    a, b = _to_sympy(a), _to_sympy(b)
    checks = (
        lambda: str(a) == str(b) or a == b,
        lambda: a.equals(b) or simplify(a - b) == 0,
        lambda: abs(a.lhs - a.rhs).equals(abs(b.lhs - b.rhs)),
        lambda: math.isclose(float(N(a)), float(N(b)), rel_tol=1e-4),
        lambda: a.shape == b.shape and a.applyfunc(lambda x: round(x, 3)).equals(b.applyfunc(lambda x: round(x, 3))),
    )
    for check in checks:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001
            continue
    return False


def symbolic_equal(a: str, b: str, timeout_s: int = 3) -> bool:
    """`_sympy_equal` within the harness's 3 s per comparison (past it: not equal, as there).

    The timeout is a SIGALRM, which exists only on the main thread: elsewhere it is off. Callers
    score through evals.scoring, whose worker processes run this on their main thread and are
    killed at the per-answer limit (evals/bounded.py), so that limit holds on any thread.
    """
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout

    on_main = threading.current_thread() is threading.main_thread()
    try:
        return timeout(timeout_s if on_main else None)(_sympy_equal)(a, b)
    except TimeoutException:
        log.warning("symbolic comparison of %r and %r took over %d s: not equal", a[:80], b[:80], timeout_s)
        return False
