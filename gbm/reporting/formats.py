"""Table text formats shared by every report table: Markdown and LaTeX (booktabs) with a caption."""

from __future__ import annotations

import pandas as pd


def markdown(table: pd.DataFrame, caption: str) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([f"{caption}\n", header, rule, *body]) + "\n"


#: Leading columns that name a row (left-aligned in LaTeX); the rest are numbers (right-aligned).
TEXT_COLUMNS = ("Dataset", "Method", "Sampler", "Prior")


def latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table: the leading naming columns (``TEXT_COLUMNS``) left-aligned, the rest right-aligned."""
    text = max(1, next((i for i, c in enumerate(table.columns) if c not in TEXT_COLUMNS), len(table.columns)))
    def cell(value) -> str:
        text = str(value).replace("_", r"\_").replace("×10³", r"$\times 10^3$").replace("–", "--").replace("∞", r"$_\infty$")
        return text.replace("%", r"\%").replace("⚠", r"\textbf{(!)}")

    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{cell(caption)}}}", rf"\label{{{label}}}",
             r"\begin{tabular}{" + "l" * text + "r" * (len(table.columns) - text) + "}", r"\toprule",
             " & ".join(cell(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
