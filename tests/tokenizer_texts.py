"""Texts the tokenizer tests encode: (reason, text) pairs.

Language entries carry the Marco language code in brackets ("[kk]") so a test can check that
all 29 languages are covered. CHAT_TEXTS are the entries that embed Qwen3 added tokens.
"""

_LANGUAGES: tuple[tuple[str, str], ...] = (
    ("English [en]", "The weather is lovely today, so we are going for a walk in the park."),
    ("Chinese, simplified [zh]", "今天天气很好，我们去公园散步吧。你想一起来吗？"),
    ("Arabic [ar]", "الطقس جميل اليوم، لذلك سنذهب للتنزه في الحديقة."),
    ("German [de]", "Das Wetter ist heute schön, deshalb gehen wir im Park spazieren."),
    ("Spanish [es]", "Hoy hace buen tiempo, así que vamos a pasear por el parque. ¿Vienes?"),
    ("French [fr]", "Il fait beau aujourd'hui, alors nous allons nous promener dans le parc."),
    ("Korean, Hangul [ko]", "오늘 날씨가 좋아서 공원에 산책하러 갑니다."),
    ("Japanese, kanji + kana [ja]", "今日は天気がいいので、公園へ散歩に行きます。"),
    ("Portuguese [pt]", "O tempo está ótimo hoje, então vamos passear no parque."),
    (
        "Turkish, dotted/dotless i [tr]",
        "Bugün hava çok güzel, bu yüzden parkta yürüyüşe çıkıyoruz. İstanbul'a gidelim.",
    ),
    ("Indonesian [id]", "Cuaca hari ini cerah, jadi kami akan berjalan-jalan di taman."),
    ("Italian [it]", "Oggi il tempo è bello, quindi andiamo a fare una passeggiata nel parco."),
    ("Dutch [nl]", "Het weer is vandaag prachtig, dus we gaan wandelen in het park."),
    ("Polish [pl]", "Dziś jest piękna pogoda, więc idziemy na spacer do parku. Zażółć gęślą jaźń."),
    ("Russian (Cyrillic) [ru]", "Сегодня прекрасная погода, поэтому мы идём гулять в парк."),
    ("Vietnamese, stacked diacritics [vi]", "Hôm nay trời đẹp, vì vậy chúng tôi đi dạo trong công viên."),
    ("Thai, no spaces between words [th]", "วันนี้อากาศดี เราจึงจะไปเดินเล่นที่สวนสาธารณะ"),
    ("Hebrew, right-to-left [he]", "מזג האוויר נעים היום, אז אנחנו הולכים לטייל בפארק."),
    ("Ukrainian (Cyrillic) [uk]", "Сьогодні чудова погода, тому ми йдемо гуляти в парк. Ґанок і їжак."),
    ("Malay [ms]", "Cuaca hari ini baik, jadi kami pergi bersiar-siar di taman."),
    ("Bengali, combining vowel signs [bn]", "আজ আবহাওয়া খুব সুন্দর, তাই আমরা পার্কে হাঁটতে যাচ্ছি।"),
    ("Czech [cs]", "Dnes je krásné počasí, takže jdeme na procházku do parku. Příliš žluťoučký kůň."),
    ("Urdu (Arabic script) [ur]", "آج موسم بہت اچھا ہے، اس لیے ہم پارک میں سیر کرنے جا رہے ہیں۔"),
    ("Kazakh (Cyrillic) [kk]", "Бүгін ауа райы керемет, сондықтан біз саябаққа серуендеуге барамыз."),
    ("Greek [el]", "Ο καιρός είναι υπέροχος σήμερα, γι' αυτό πάμε βόλτα στο πάρκο."),
    ("Romanian, comma-below letters [ro]", "Astăzi vremea este frumoasă, așa că mergem la plimbare în parc."),
    ("Hungarian [hu]", "Ma szép az idő, ezért elmegyünk sétálni a parkba. Árvíztűrő tükörfúrógép."),
    ("Nepali (Devanagari) [ne]", "आज मौसम राम्रो छ, त्यसैले हामी पार्कमा घुम्न जाँदैछौं।"),
    ("Azerbaijani (Latin) [az]", "Bu gün hava çox gözəldir, ona görə də parkda gəzməyə gedirik."),
    ("Chinese, traditional", "今天天氣很好，我們去公園散步吧。"),
    ("Japanese, katakana loanwords", "コンピューターとインターネットでデータベースを検索します。"),
)

_CODE: tuple[tuple[str, str], ...] = (
    (
        "Python with nested 4/8-space indentation",
        'def route(x, experts):\n    """Pick the top-2 experts."""\n    scores = [e(x) for e in experts]\n'
        "    if not scores:\n        return []\n    for i, s in enumerate(scores):\n"
        "        if s > 0.5:\n            yield i\n",
    ),
    ("JSON with quotes and braces", '{"name": "marco", "experts": [1, 2, 3], "ok": true, "x": null}'),
    (
        "C-like code with tabs and operators",
        "int main(void) {\n\tfor (int i = 0; i < n; ++i) {\n\t\tsum += a[i] * b[i];\n\t}\n\treturn sum != 0 ? 1 : -1;\n}\n",
    ),
    ("shell pipeline with flags", "grep -rn 'TODO' src/ | sort -u > todo.txt && wc -l todo.txt"),
)

_WHITESPACE: tuple[tuple[str, str], ...] = (
    ("runs of 1..4 spaces between words", "a b  c   d    e"),
    ("long space indentation run", "                x = 1"),
    ("tabs, leading and inside", "\tindented\t\ttabs\tend"),
    ("three newlines (\\n\\n\\n)", "first paragraph\n\n\nsecond paragraph"),
    ("Windows line endings (\\r\\n)", "line one\r\nline two\r\n\r\nline four"),
    ("trailing spaces before newline", "trailing spaces   \nnext line  \n"),
    ("whitespace only", " \t \n  \n"),
    ("spaces around lone newline", "x \n \n y"),
    ("no-break space and ideographic space", "price:\u00a0100 €\u3000合計"),
)

_DIGITS: tuple[tuple[str, str], ...] = (
    ("long number (digits split one by one)", "12345678901234567890"),
    ("decimal 3.14 and pi", "pi is about 3.14 or 3.14159265358979"),
    ("thousands separators", "1,000,000 people and 1.000.000,50 euros"),
    ("timestamp and phone", "2024-06-01T12:30:00Z, call +1 (555) 010-9999"),
    ("Arabic-Indic and fullwidth digits", "٠١٢٣٤٥٦٧٨٩ and １２３"),
)

_EMOJI: tuple[tuple[str, str], ...] = (
    ("emoji with skin tone modifier", "I love it 😀👍🏽 really!"),
    ("ZWJ family sequence", "family: 👨‍👩‍👧‍👦"),
    ("ZWJ rainbow flag with variation selector", "pride 🏳️‍🌈 flag"),
    ("regional-indicator flags", "flags 🇯🇵🇺🇸🇩🇪🇧🇷"),
    ("keycap sequence", "press 1️⃣ then #️⃣"),
)

_OTHER: tuple[tuple[str, str], ...] = (
    ("contractions in capitals (case-insensitive rule)", "I'VE GOT IT, DON'T YOU? WE'LL SEE, SHE'D KNOW."),
    ("contractions in lower case", "don't, can't, we're, they've, I'm, you'll, he'd, it's Bob's."),
    ("mixed scripts in one line", "Python是一种编程语言 and Пример with العربية 123"),
    ("Japanese and Latin without spaces", "東京Tokyoは大都市でNew Yorkより大きい"),
    ("camelCase identifiers with digits", "getHTTPResponseCode2xx parseJSON5 utf8ToUtf16"),
    ("repeated punctuation runs", "Wait!!!!!!!! ??? ===== ----- ...... ***"),
    ("URL and e-mail", "see https://example.com/a/b?x=1&y=2#frag or mail me@example.org"),
    ("decomposed accents (NFD input, normalized to NFC)", "Cafe\u0301 cre\u0300me bru\u0302le\u0301e"),
    ("ligature and math symbols", "ﬁnal ∑ x² ≤ √2 → ∞"),
    ("control characters NUL and BEL", "nul\x00bell\x07end"),
    ("near-miss special token text (not a token)", "<|im_start| user and < think> and <tool_call"),
)

_CHAT: tuple[tuple[str, str], ...] = (
    ("ChatML user turn", "<|im_start|>user\nhi<|im_end|>\n"),
    ("think block, non-special added tokens", "<think>x</think>"),
    ("tool call tag around JSON", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
    ("tool response tags", "<tool_response>\n22 degrees\n</tool_response>"),
    ("endoftext between documents", "end of doc one<|endoftext|>start of doc two"),
    (
        "full ChatML conversation with generation prompt",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>assistant\n",
    ),
    ("special tokens glued to words", "word<|im_end|>word<think>word</think>word"),
    ("fill-in-the-middle tokens", "<|fim_prefix|>def f():\n    <|fim_suffix|>\n<|fim_middle|>return 1"),
    ("vision placeholders", "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>Describe it."),
)

TEXTS: tuple[tuple[str, str], ...] = _LANGUAGES + _CODE + _WHITESPACE + _DIGITS + _EMOJI + _OTHER + _CHAT

CHAT_TEXTS: tuple[tuple[str, str], ...] = _CHAT

MARCO_LANGUAGES: tuple[str, ...] = (
    "en",
    "zh",
    "ar",
    "de",
    "es",
    "fr",
    "ko",
    "ja",
    "pt",
    "tr",
    "id",
    "it",
    "nl",
    "pl",
    "ru",
    "vi",
    "th",
    "he",
    "uk",
    "ms",
    "bn",
    "cs",
    "ur",
    "kk",
    "el",
    "ro",
    "hu",
    "ne",
    "az",
)
