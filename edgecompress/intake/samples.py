"""Built-in sentences for parity checks when no `--data` is given: varied length, case and punctuation."""

SAMPLE_TEXTS = (
    "A gripping, beautifully shot film with a cast that never misses a beat.",
    "Dull.",
    "I wanted to like it, but the second half drags and the ending is a mess.",
    "The jokes land, the songs are catchy, and the kids in the audience loved it!",
    "An ambitious failure: big ideas, clumsy execution, and far too long at 160 minutes.",
    "Not bad.",
    "Call me back when you get this, the meeting moved to 3pm.",
    "WINNER!! You have been selected for a FREE prize, text CLAIM to 80082 now.",
    "Its heart is in the right place, even when the script isn't.",
    "A quiet, patient character study that rewards attention.",
    "Worst. Sequel. Ever.",
    "Sublime performances lift a familiar story into something genuinely moving; "
    "by the final act the theatre was silent, and that silence said more than any review could.",
    "meh",
    "Ok lar... Joking wif u oni...",
    "The plot is predictable, yet the direction is confident and the score is lovely.",
    "Über-stylish, très chic, and utterly hollow.",
)
