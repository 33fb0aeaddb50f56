"""The texts the golden data was made from (kept with it so the tests do not depend on anything else)."""

import random

PROMPTS = [
    "The history of the Roman Empire begins",
    'def quicksort(arr):\n    """Sort a list."""\n',
    "中国的首都是北京。北京是一座",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]

TEACHER_TEXT = (
    "A lighthouse keeper kept a notebook of every ship that passed the point. Over forty years the entries "
    "changed: sails gave way to steam, steam to diesel, and wooden hulls to steel. He wrote the date, the "
    "weather, and a line about each vessel. On foggy nights he counted the seconds between the horn blasts "
    "and wrote those down too.\n\n"
    "def count_words(path):\n    counts = {}\n    with open(path) as f:\n        for line in f:\n"
    "            for word in line.split():\n                counts[word] = counts.get(word, 0) + 1\n"
    "    return counts\n\n"
    "When the light was automated in 1987, the notebooks went to the town library, where a student later "
    "typed them up. She found that the busiest year was 1962, with 4,318 ships, and that the keeper had "
    "never missed a single day. The library now keeps the originals in a glass case near the entrance, "
    "and children like to find the pages where he drew small pictures of the boats in the margins."
)

HANDWRITTEN = [
    "Hello world",
    "hello world",
    " Hello world",
    "  Hello  world  ",
    "Hello\nworld",
    "\n\n\n",
    "\t\tindented",
    "   ",
    " ",
    "",
    "a",
    "I'm sure they're right, aren't they? We'll see; you'd know.",
    "DON'T SHOUT",
    "The quick brown fox jumps over the lazy dog.",
    "e.g. i.e. etc. Mr. Mrs. Dr.",
    "3.14159 2.71828 1e-9 -42",
    "1234567890",
    "12 345 6789 $1,000,000.00 50% 3/4",
    "2026-11-24T22:56:00Z",
    "+1 (555) 123-4567",
    "user@example.com https://example.org/path?q=1&r=two#frag",
    "C:\\Windows\\System32\\drivers",
    '<html><body><p class="x">Hi &amp; bye</p></body></html>',
    '{"key": [1, 2, {"nested": null}]}',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    'fn main() { println!("{}", 1 + 2); }',
    "    def __init__(self, x: int) -> None:\n        self.x = x",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "#include <stdio.h>\nint main(void) { return 0; }",
    "你好，世界！",
    "我爱北京天安门。",
    "机器学习是人工智能的一个分支。",
    "日本語のテキストです。カタカナも。",
    "한국어 문장입니다.",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Tiếng Việt: Cửa Việt, Hà Nội",
    "Ça va? Où est la bibliothèque? Über straße",
    "emoji 😀😃😄 👍🏽 🇫🇷 👩‍👩‍👧‍👦",
    "❤️🔥✨",
    "ﬁ ﬂ ligatures",
    "Ω≈ç√∫˜µ≤≥÷",
    "¡¿«»‹›„“”‘’",
    "a\u00a0b\u2009c\u200bd",
    "tab\there",
    "CRLF\r\nline",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!!!!!??????......",
    "----====____",
    "    leading four spaces",
    "trailing spaces    ",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<s> </s> <unk> <pad> <bos> <eos>",
    "<|endoftext|> after",
    "text<|im_end|>text",
    "<mask> and <unused0>",
]

_PIECES = [
    "the",
    " of",
    "ing",
    " 123",
    "42",
    "你",
    "好",
    "世界",
    "😀",
    "é",
    "ß",
    " ",
    "  ",
    "\n",
    "\t",
    "def",
    "(",
    ")",
    ":",
    "{",
    "}",
    "'s",
    "’",
    "—",
    "…",
    "مرحبا",
    "Привет",
    "x",
    "X",
    "_",
    "0.5",
    "%",
    "#",
    "<",
    ">",
    "<|im_start|>",
    "<end_of_turn>",
    "ñ",
    "ü",
    "한",
    "ア",
]


def test_strings(n_random: int = 400, seed: int = 1234) -> list[str]:
    """The hand-written strings, lines of varied prose/code, and seeded random mixes: >= 600."""
    rng = random.Random(seed)
    out = list(HANDWRITTEN)
    out += [line for line in (TEACHER_TEXT + "\n" + "\n".join(PROMPTS)).split("\n") if line.strip()]
    words = TEACHER_TEXT.split(" ")
    for _ in range(120):
        i = rng.randrange(len(words) - 8)
        out.append(" ".join(words[i : i + rng.randrange(1, 8)]))
    for _ in range(n_random):
        out.append("".join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 12))))
    return out
