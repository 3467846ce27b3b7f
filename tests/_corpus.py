"""A small generated corpus for tests: speaker lines of random words, shaped like the plays (no download, any size)."""
import random

WORDS = ("the king queen of and to my lord what is thou art not be love death night day sweet fair good "
         "come go hence speak hear tell me now").split()


def play_text(n_speeches: int, seed: int = 0) -> str:
    "`n_speeches` speeches ('ROMEO:' etc., then 4-12 random words ending in a full stop), separated by blank lines."
    rng = random.Random(seed)
    speeches = [f"{rng.choice(['ROMEO', 'JULIET', 'NURSE'])}:\n"
                + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + ".\n" for _ in range(n_speeches)]
    return "\n".join(speeches)
