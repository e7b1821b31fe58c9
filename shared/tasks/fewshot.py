"""Worked examples prepended to the question when `task.few_shot` is on (written for restem).

GSM8K: eight grade-school word problems with step-by-step solutions that end in "The answer is N."
(the standard 8-shot chain-of-thought setup; the answer form is the one our checker reads). MATH:
four problems in the Minerva style ("Problem:" / "Solution:", LaTeX, a final boxed answer), one
each from algebra, number theory, counting and geometry. They are not taken from either dataset's
test split, so they cannot leak an evaluation answer.
"""

from __future__ import annotations

GSM8K_EXEMPLARS = (
    ("A baker makes 36 muffins and sells them in boxes of 4. How many boxes does she fill?",
     "Each box holds 4 muffins, so 36 muffins fill 36 / 4 = 9 boxes. The answer is 9."),
    ("Tom has 15 marbles. He gives 6 to his sister and then buys 10 more. How many marbles does he have now?",
     "After giving 6 away he has 15 - 6 = 9 marbles. After buying 10 more he has 9 + 10 = 19. The answer is 19."),
    ("A bus ticket costs $3. A family of 5 takes the bus to the park and back. How much do they spend?",
     "One trip for 5 people costs 5 * 3 = 15 dollars. There and back is 2 trips, so 2 * 15 = 30 dollars. The answer is 30."),
    ("A garden has 4 rows of 12 tulips. Rabbits eat 9 tulips. How many tulips are left?",
     "The garden has 4 * 12 = 48 tulips. After the rabbits eat 9, 48 - 9 = 39 are left. The answer is 39."),
    ("Maria reads 20 pages a day. Her book has 180 pages and she has read 60. How many more days does she need?",
     "She has 180 - 60 = 120 pages left. At 20 pages a day that takes 120 / 20 = 6 days. The answer is 6."),
    ("A shirt costs $40 and is on sale for 25% off. What is the sale price?",
     "25% of 40 is 0.25 * 40 = 10 dollars. The sale price is 40 - 10 = 30 dollars. The answer is 30."),
    ("Sam is 3 times as old as his son. The son is 11. How old will Sam be in 4 years?",
     "Sam is 3 * 11 = 33 years old. In 4 years he will be 33 + 4 = 37. The answer is 37."),
    ("A tank holds 500 liters. It is filled at 25 liters per minute starting empty. How many minutes until it is 80% full?",
     "80% of 500 liters is 0.8 * 500 = 400 liters. At 25 liters per minute that takes 400 / 25 = 16 minutes. The answer is 16."),
)  # fmt: skip

MATH_EXEMPLARS = (
    ("Find the value of $x$ such that $3x - 7 = 2x + 5$.",
     "Subtracting $2x$ from both sides gives $x - 7 = 5$, so $x = 12$.\nFinal Answer: The final answer is $\\boxed{12}$."),
    ("What is the remainder when $7^{4}$ is divided by $5$?",
     "Since $7 \\equiv 2 \\pmod 5$, we have $7^4 \\equiv 2^4 = 16 \\equiv 1 \\pmod 5$.\nFinal Answer: The final answer is $\\boxed{1}$."),
    ("In how many ways can 3 books be chosen from a shelf of 6 different books?",
     "The order does not matter, so the number of ways is $\\binom{6}{3} = \\frac{6 \\cdot 5 \\cdot 4}{3 \\cdot 2 \\cdot 1} = 20$.\nFinal Answer: The final answer is $\\boxed{20}$."),
    ("A right triangle has legs of length $5$ and $12$. What is the length of its hypotenuse?",
     "By the Pythagorean theorem the hypotenuse is $\\sqrt{5^2 + 12^2} = \\sqrt{169} = 13$.\nFinal Answer: The final answer is $\\boxed{13}$."),
)  # fmt: skip

FEW_SHOT_TASKS = ("gsm8k", "math")


def few_shot_prefix(task: str) -> str:
    """The worked examples of `task`, ready to put before the question; "" for tasks without any."""
    if task == "gsm8k":
        shots = "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in GSM8K_EXEMPLARS)
        return f"Here are solved examples.\n\n{shots}\n\nNow solve this one the same way.\n\n"
    if task == "math":
        shots = "\n\n".join(f"Problem:\n{q}\n\nSolution:\n{a}" for q, a in MATH_EXEMPLARS)
        return f"Here are solved examples.\n\n{shots}\n\nNow solve this one the same way.\n\n"
    return ""
