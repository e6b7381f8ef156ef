"""Writes the math part of calibration.txt: worked problems with deterministic numbers (seed 12).

Run from the repository root: python marco_gguf/calibration/make_math.py > /tmp/math.txt
Not shipped in the wheel; kept so the section can be regenerated or extended.
"""
from __future__ import annotations

import math
import random
from fractions import Fraction

rng = random.Random(12)


def linear() -> str:
    a, x, b = rng.randint(2, 12), rng.randint(-15, 25), rng.randint(-40, 40)
    c = a * x + b
    return (f"Solve {a}x {'+' if b >= 0 else '-'} {abs(b)} = {c}.\n" +
            (f"Subtract {b} from both sides" if b >= 0 else f"Add {-b} to both sides") + f": {a}x = {c - b}. Divide by {a}: x = {x}.\n"
            f"Check: {a}·{x} {'+' if b >= 0 else '-'} {abs(b)} = {c}. ✓")


def quadratic() -> str:
    r1, r2 = rng.randint(-9, 9), rng.randint(-9, 9)
    b, c = -(r1 + r2), r1 * r2
    disc = b * b - 4 * c
    return (f"Find the roots of x² {'+' if b >= 0 else '-'} {abs(b)}x {'+' if c >= 0 else '-'} {abs(c)} = 0.\n"
            f"The discriminant is Δ = b² − 4ac = ({b})² − 4·1·({c}) = {disc}, so √Δ = {int(math.isqrt(disc))}.\n"
            f"x = (−b ± √Δ) / 2 = ({-b} ± {int(math.isqrt(disc))}) / 2, giving x₁ = {max(r1, r2)} and x₂ = {min(r1, r2)}.")


def fractions() -> str:
    p, q = Fraction(rng.randint(1, 9), rng.randint(2, 12)), Fraction(rng.randint(1, 9), rng.randint(2, 12))
    den = p.denominator * q.denominator // math.gcd(p.denominator, q.denominator)
    return (f"Compute {p} + {q}.\nThe least common denominator is {den}: "
            f"{p} = {p.numerator * den // p.denominator}/{den} and {q} = {q.numerator * den // q.denominator}/{den}.\n"
            f"Their sum is {(p + q).numerator * den // (p + q).denominator}/{den} = {p + q}.")


def percent() -> str:
    price, pct = rng.randint(20, 900), rng.choice([5, 10, 12, 15, 20, 25, 30, 40])
    off = price * pct / 100
    return (f"A jacket costs ${price}. It is on sale for {pct}% off. What is the new price?\n"
            f"{pct}% of {price} is {price} × {pct}/100 = {off:g}. The new price is {price} − {off:g} = ${price - off:g}.")


def derivative() -> str:
    a, n, b = rng.randint(2, 9), rng.randint(2, 6), rng.randint(1, 9)
    return (f"Differentiate f(x) = {a}x^{n} + {b}·sin(x).\n"
            f"By the power rule, d/dx {a}x^{n} = {a * n}x^{n - 1}; and d/dx sin(x) = cos(x).\n"
            f"So f'(x) = {a * n}x^{n - 1} + {b}·cos(x).")


def series() -> str:
    n = rng.randint(10, 200)
    return (f"What is 1 + 2 + … + {n}?\nPair the first and last terms: (1 + {n}) + (2 + {n - 1}) + … "
            f"Each pair sums to {n + 1}, and there are {n}/2 pairs, so the total is {n}·{n + 1}/2 = {n * (n + 1) // 2}.")


def probability() -> str:
    red, blue = rng.randint(2, 9), rng.randint(2, 9)
    total = red + blue
    p = Fraction(red, total) * Fraction(red - 1, total - 1)
    return (f"A bag holds {red} red and {blue} blue marbles. Two are drawn without replacement. "
            f"What is the probability that both are red?\n"
            f"P = ({red}/{total}) · ({red - 1}/{total - 1}) = {p} ≈ {float(p):.4f}.")


def geometry() -> str:
    a, b = rng.randint(3, 20), rng.randint(3, 20)
    c = math.hypot(a, b)
    return (f"A right triangle has legs {a} cm and {b} cm. How long is the hypotenuse, and what is the area?\n"
            f"By Pythagoras, c = √({a}² + {b}²) = √{a * a + b * b} ≈ {c:.3f} cm. Area = {a}·{b}/2 = {a * b / 2:g} cm².")


def word_problem_multilingual() -> str:
    speed, hours = rng.randint(40, 120), rng.randint(2, 9)
    d = speed * hours
    return rng.choice([
        f"一辆汽车以每小时{speed}公里的速度行驶了{hours}小时。它一共行驶了多少公里？\n解：路程 = 速度 × 时间 = {speed} × {hours} = {d}公里。",
        f"Un tren viaja a {speed} km/h durante {hours} horas. ¿Qué distancia recorre?\nSolución: d = v · t = {speed} · {hours} = {d} km.",
        f"Ein Zug fährt {hours} Stunden lang mit {speed} km/h. Wie weit kommt er?\nLösung: s = v · t = {speed} · {hours} = {d} km.",
        f"Une voiture roule à {speed} km/h pendant {hours} heures. Quelle distance parcourt-elle ?\nSolution : d = v × t = {speed} × {hours} = {d} km.",
        f"時速{speed}キロの車が{hours}時間走ると、何キロ進みますか。\n答え：距離＝速さ×時間＝{speed}×{hours}＝{d}キロ。",
        f"Поезд идёт со скоростью {speed} км/ч в течение {hours} часов. Какое расстояние он проходит?\nРешение: s = v · t = {speed} · {hours} = {d} км.",
        f"Bir otomobil saatte {speed} km hızla {hours} saat gidiyor. Toplam kaç km yol alır?\nÇözüm: yol = hız × zaman = {speed} × {hours} = {d} km.",
        f"Một xe máy đi với vận tốc {speed} km/h trong {hours} giờ. Xe đi được bao nhiêu km?\nGiải: quãng đường = {speed} × {hours} = {d} km.",
        f"سيارة تسير بسرعة {speed} كم/ساعة لمدة {hours} ساعات. ما المسافة التي تقطعها؟\nالحل: المسافة = السرعة × الزمن = {speed} × {hours} = {d} كم.",
        f"시속 {speed}km로 {hours}시간 달린 자동차의 이동 거리는?\n풀이: 거리 = 속력 × 시간 = {speed} × {hours} = {d}km.",
    ])


KINDS = (linear, quadratic, fractions, percent, derivative, series, probability, geometry, word_problem_multilingual)

if __name__ == "__main__":
    for i in range(300):
        print(f"Problem {i + 1}. {KINDS[i % len(KINDS)]()}\n")
