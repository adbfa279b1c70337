import pytest

from spark_voice.text import SentenceChunker, chunk_text, drop_markers, guess_language


def stream(text: str, step: int, **kw) -> tuple[list[str], list[int]]:
    """Feed `text` in pieces of `step` characters; return chunks and the feed index each came at."""
    c = SentenceChunker(**kw)
    out, when = [], []
    for i in range(0, len(text), step):
        for ch in c.push(text[i:i + step]):
            out.append(ch)
            when.append(i)
    out += c.flush()
    return out, when


JA = "こんにちは。今日はいい天気ですね！散歩に行きましょうか？ええ、行きましょう。"
EN = "Hello there. The weather is nice today! Shall we go for a walk? Yes, let's go."


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100])
def test_japanese_sentences(step):
    out, _ = stream(JA, step)
    assert out == ["こんにちは。", "今日はいい天気ですね！", "散歩に行きましょうか？", "ええ、行きましょう。"]
    assert "".join(out) == JA


@pytest.mark.parametrize("step", [1, 3, 5, 100])
def test_english_sentences(step):
    out, _ = stream(EN, step)
    assert out == ["Hello there.", "The weather is nice today!", "Shall we go for a walk?", "Yes, let's go."]


def test_released_as_soon_as_speakable():
    c = SentenceChunker()
    assert c.push("こんにちは。") == ["こんにちは。"]  # full-width end: no need to wait
    assert c.push("Hello there.") == []  # an ASCII period may continue ("3.5", "e.g.")
    assert c.push(" How") == ["Hello there."]
    assert c.flush() == ["How"]


def test_minimum_length_merges_short_pieces():
    out = chunk_text("はい。そうです。わかりました。")
    assert out == ["はい。そうです。", "わかりました。"]
    assert all(len(x) >= 6 for x in out[:-1])
    assert chunk_text("Hi. Ok. Fine then, let us go.") == ["Hi. Ok.", "Fine then, let us go."]


def test_clause_split_for_long_japanese_clauses():
    text = "明日の東京の天気は晴れのち曇りで、最高気温は二十度、最低気温は十二度の予報です。"
    out = chunk_text(text)
    assert len(out) >= 2 and "".join(out) == text
    assert out[0].endswith("、")


def test_numbers_abbreviations_and_urls_do_not_split():
    assert chunk_text("Pi is 3.14 roughly. Dr. Smith agrees.") == ["Pi is 3.14 roughly.", "Dr. Smith agrees."]
    assert chunk_text("See example.com for more.") == ["See example.com for more."]


def test_closing_quotes_stay_with_sentence():
    assert chunk_text("彼は「はい。」と言った。次へ進もう。") == ["彼は「はい。」と言った。", "次へ進もう。"]
    assert chunk_text('He said "stop." Then left.') == ['He said "stop."', "Then left."]


def test_long_text_without_punctuation_is_cut():
    text = "word " * 100
    out = chunk_text(text)
    assert len(out) > 1 and all(len(x) <= 220 for x in out)


def test_flush_and_empty():
    c = SentenceChunker()
    assert c.push("") == [] and c.flush() == []
    assert c.push("途中まで") == [] and c.flush() == ["途中まで"]


def test_guess_language_and_markers():
    assert guess_language("こんにちは") == "ja" and guess_language("カタカナ") == "ja"
    assert guess_language("漢字") == "ja" and guess_language("hello") == "en"
    assert drop_markers("[BLANK_AUDIO]") == ""
    assert drop_markers("hello [BLANK_AUDIO] world (music)") == "hello world"
    assert drop_markers("（音楽）こんにちは") == "こんにちは"


@pytest.mark.parametrize("step", [1, 4, 100])
def test_sentences_inside_quotes_stay_whole(step):
    text = "「モックの文字起こしです。音声は1.0秒でした。」と聞こえました。これは回答です。"
    out, _ = stream(text, step)
    assert out == ["「モックの文字起こしです。音声は1.0秒でした。」と聞こえました。", "これは回答です。"]


def test_unclosed_quote_is_cut_by_length():
    out = chunk_text("「" + "あ" * 300 + "。")
    assert len(out) >= 2 and all(len(x) <= 220 for x in out)


# ---------------------------------------------------------------- the eager rule never stalls
JA_RUN = ("明日の東京の天気は晴れのち曇りで最高気温は二十度最低気温は十二度の予報ですので傘は持っていかなくても"
          "大丈夫だと思いますがもし心配なら折り畳み傘を持っていくと良いでしょうそれから週末は雨が降りそうです")
EN_RUN = ("the capital of France is Paris and it is known for the Eiffel Tower which was built in 1889 for "
          "the world fair and is now one of the most visited monuments in the world with millions of visitors "
          "every single year coming from every country")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("step", [1, 2, 5])
def test_long_japanese_run_without_punctuation_is_released_early(step):
    out, when = stream(JA_RUN, step)
    assert "".join(out) == JA_RUN
    assert len(out) >= 3
    # the first chunk comes after at most ~20 characters (+ one feed), later ones after ~40
    assert when[0] <= 20 + step and len(out[0]) <= 20
    assert all(len(x) <= 40 for x in out[:-1])
    # cut after a particle before a kanji word, never inside okurigana (kanji -> hiragana)
    from spark_voice.text import _kind
    for a, b in zip(out, out[1:]):
        assert not (_kind(a[-1]) == "kanji" and _kind(b[0]) == "hira"), (a, b)
    assert out[0].endswith(("で", "は", "が", "を", "に", "と", "も", "へ"))


@pytest.mark.parametrize("step", [1, 3, 8])
def test_long_english_run_without_punctuation_is_cut_at_words(step):
    out, when = stream(EN_RUN, step)
    assert " ".join(out) == EN_RUN
    assert when[0] <= 40 + step and len(out[0]) <= 40
    assert all(len(x) <= 80 for x in out[:-1])
    words = set(EN_RUN.split())
    for x in out:  # never inside a word or a number
        assert set(x.split()) <= words
    assert any(x.split()[0] in ("and", "which", "for", "with", "in") for x in out[1:])


def test_first_clause_is_released_early_then_longer_clauses():
    c = SentenceChunker()
    assert c.push("明日の天気は、") == ["明日の天気は、"]        # the first chunk: 7 characters suffice
    assert c.push("晴れ、") == []                                # later clauses wait for clause_chars
    assert c.push("最高気温は二十度の予報です。") == ["晴れ、最高気温は二十度の予報です。"]
    assert SentenceChunker(rule="sentence").push("明日の天気は、") == []  # the old rule waited


def test_time_limit_releases_a_slow_run_at_a_break_point():
    clock = FakeClock()
    c = SentenceChunker(clock=clock, force_ms=1000)
    assert c.push("今日は") == []
    clock.t = 0.5
    assert c.push("晴れです") == []              # 7 characters, 0.5 s: keep going
    clock.t = 1.2
    assert c.poll() == []                        # old enough, but under min_force (8)
    assert c.push("ね東京") == ["今日は晴れですね"]  # a break point (hiragana -> kanji) after 8
    assert c.flush() == ["東京"]
    # the time limit counts from the first pending character, not the stream start
    clock.t = 5.0
    assert c.push("そして大阪の") == []


def test_old_rule_stalls_and_new_rule_does_not():
    old = SentenceChunker(rule="sentence")
    new = SentenceChunker()
    assert old.push(JA_RUN) == []                 # the whole run waits for the end of the answer
    assert len(new.push(JA_RUN)) >= 2 and new.forced >= 2


@pytest.mark.parametrize("step", [1, 4])
def test_quoted_sentences_stay_whole_unless_they_stall(step):
    text = "「はい。そうです。」と彼は言いました。次です。"
    out, _ = stream(text, step)
    assert out == ["「はい。そうです。」と彼は言いました。", "次です。"]
    long_quote = "「" + "今日はとても良い天気ですね。" * 8 + "」と言った。"
    out, when = stream(long_quote, step)
    assert "".join(out) == long_quote and when[0] <= 41 + step  # forced out of the quote


def test_numbers_are_never_split_when_forced():
    text = "価格は" + "1234567890" * 6 + "円です"
    out = chunk_text(text, rule="eager")
    assert "".join(out) == text
    digits = [x for x in out if any(c.isdigit() for c in x)]
    assert len(digits) == 1  # one run of digits stays in one chunk


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="accepted values"):
        SentenceChunker(rule="fast")
