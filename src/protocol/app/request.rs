//! The server's `text/json` content decoder: bytes go in as they arrive, a typed
//! [`Request`] comes out, and memory stays bounded whatever the content holds.
//!
//! `actson` (a push parser: feed bytes, take events until `NeedMoreInput`) checks the JSON
//! grammar and reports structure. It keeps the text of the current string or number whole,
//! so a filter in front of it passes only a prefix of any string or digit run the request
//! does not need (the rest is checked here and never stored); only the top-level `action`
//! and `value` strings reach it whole, as the answer quotes them in full.

use std::fmt;

use actson::feeder::PushJsonFeeder;
use actson::options::JsonParserOptionsBuilder;
use actson::parser::ParserError;
use actson::{JsonEvent, JsonParser};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{push_json_str, search, FrameError, MAX_QUOTED_CHARS};

/// Containers nested deeper than this are refused, as serde_json (which decoded this
/// content before) refuses them: its recursion limit of 128 allows 127 levels.
pub const MAX_DEPTH: usize = 127;
/// Bytes of a string's JSON text passed to the parser when the request does not need the
/// whole string: enough for any quoted excerpt (`MAX_QUOTED_CHARS` characters, 6 bytes
/// each at most as `\uXXXX`) and to tell a long key from "action" or "value".
const STRING_PREFIX: usize = 256;
/// Digits of one run (integer, fraction or exponent part) passed to the parser; the rest
/// are checked here. Enough for any quoted excerpt.
const DIGITS_PREFIX: usize = 64;

/// One `text/json` request: the top-level object's `action` and `value` members (the last
/// one of each name, as serde_json keeps it). Every other member is checked and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub action: Option<Field>,
    pub value: Option<Field>,
}

/// A member's value as the answer uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A JSON string, decoded.
    Str(String),
    /// Any other JSON value, as compact JSON text cut to `MAX_QUOTED_CHARS` characters
    /// (then `...`): the answer quotes it, and a quote never needs the whole value.
    Json(String),
}

impl Field {
    /// The field as the answer quotes it; `null` when absent (where Python prints `None`).
    fn text(field: Option<&Field>) -> &str {
        match field {
            Some(Field::Str(text) | Field::Json(text)) => text,
            None => "null",
        }
    }
}

impl Request {
    /// The tutorial's answer (`libserver.py`'s `_create_response_json_content`).
    pub fn answer(&self) -> String {
        match &self.action {
            Some(Field::Str(action)) if action == "search" => match &self.value {
                Some(Field::Str(query)) => search(query),
                other => format!("No match for '{}'.", Field::text(other.as_ref())),
            },
            other => format!("Error: invalid action '{}'.", Field::text(other.as_ref())),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "action {:?} value {:?}",
            Field::text(self.action.as_ref()),
            Field::text(self.value.as_ref())
        )
    }
}

/// Which top-level member's value comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    None,
    Action,
    Value,
    Other,
}

/// What the content's top-level value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// Nothing seen yet.
    Unknown,
    Object,
    /// Valid so far but not an object: its kind, for the error once the content is done.
    Other(&'static str),
}

/// Where the filter is in the JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens or in a number; `digits` is the length of the current digit run.
    Outside { digits: usize },
    /// Inside a string (the opening quote has gone to the parser).
    InString(StringLex),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StringLex {
    /// The request needs the whole string: everything goes to the parser.
    whole: bool,
    /// Body bytes passed to the parser so far.
    passed: usize,
    /// The rest of the body is checked here and withheld from the parser.
    cut: bool,
    escape: Escape,
    /// A `\uD800`-`\uDBFF` escape was just read: a low surrogate escape must follow.
    high_surrogate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After a backslash.
    Backslash,
    /// In `\uXXXX` with this many hex digits to go and the value so far.
    Hex {
        left: u8,
        code: u16,
    },
}

/// A non-string `action` or `value` being quoted: compact JSON text like serde_json's
/// `to_string`, members in the order sent, cut at `MAX_QUOTED_CHARS` characters.
#[derive(Debug, Default)]
struct Quote {
    text: String,
    chars: usize,
    truncated: bool,
    /// A value ended last, so the next key or value needs a comma.
    comma: bool,
}

impl Quote {
    fn piece(&mut self, text: &str) {
        for c in text.chars() {
            if self.chars == MAX_QUOTED_CHARS {
                self.truncated = true;
                return;
            }
            self.text.push(c);
            self.chars += 1;
        }
    }

    fn separate(&mut self) {
        if std::mem::take(&mut self.comma) {
            self.piece(",");
        }
    }

    fn string(&mut self, text: &str, cut: bool) {
        if self.truncated {
            return;
        }
        let mut escaped = Vec::with_capacity(text.len() + 2);
        push_json_str(&mut escaped, text);
        // push_json_str escapes whole characters only, so this is still UTF-8.
        self.piece(&String::from_utf8_lossy(&escaped));
        if cut {
            self.truncated = true;
        }
    }

    /// One parser event inside the quoted value; `text` is the string or number read.
    fn event(&mut self, event: JsonEvent, text: &str, cut: bool) {
        match event {
            JsonEvent::StartObject | JsonEvent::StartArray => {
                self.separate();
                self.piece(if event == JsonEvent::StartObject {
                    "{"
                } else {
                    "["
                });
            }
            JsonEvent::EndObject | JsonEvent::EndArray => {
                self.piece(if event == JsonEvent::EndObject {
                    "}"
                } else {
                    "]"
                });
                self.comma = true;
            }
            JsonEvent::FieldName => {
                self.separate();
                self.string(text, cut);
                self.piece(":");
            }
            JsonEvent::ValueString => {
                self.separate();
                self.string(text, cut);
                self.comma = true;
            }
            JsonEvent::ValueInt | JsonEvent::ValueFloat => {
                self.separate();
                self.piece(text);
                if cut {
                    self.truncated = true;
                }
                self.comma = true;
            }
            JsonEvent::ValueTrue | JsonEvent::ValueFalse | JsonEvent::ValueNull => {
                self.separate();
                self.piece(match event {
                    JsonEvent::ValueTrue => "true",
                    JsonEvent::ValueFalse => "false",
                    _ => "null",
                });
                self.comma = true;
            }
            JsonEvent::NeedMoreInput => {}
        }
    }

    fn finish(mut self) -> Field {
        if self.truncated {
            self.text.push_str("...");
        }
        Field::Json(self.text)
    }
}

/// What the events mean: the request being built and where the parser is in it.
#[derive(Debug)]
struct Doc {
    top: Top,
    /// Containers open.
    depth: usize,
    member: Member,
    /// Quoting a non-string `action`/`value` that is an object or array.
    quote: Option<Quote>,
    request: Request,
}

impl Default for Doc {
    fn default() -> Self {
        Doc {
            top: Top::Unknown,
            depth: 0,
            member: Member::None,
            quote: None,
            request: Request::default(),
        }
    }
}

impl Doc {
    /// Whether a string starting now is the value of a top-level `action` or `value`.
    fn wants_whole_string(&self) -> bool {
        self.top == Top::Object
            && self.depth == 1
            && self.quote.is_none()
            && matches!(self.member, Member::Action | Member::Value)
    }

    fn assign(&mut self, field: Field) {
        match std::mem::replace(&mut self.member, Member::None) {
            Member::Action => self.request.action = Some(field),
            Member::Value => self.request.value = Some(field),
            Member::None | Member::Other => {}
        }
    }

    /// Takes one parser event. `text` reads the current string or number; `cut` says
    /// the filter passed only part of it.
    fn event<'t>(
        &mut self,
        event: JsonEvent,
        text: impl Fn() -> Result<&'t str, FrameError>,
        cut: bool,
        at: usize,
    ) -> Result<(), FrameError> {
        if self.top == Top::Unknown {
            self.top = match event {
                JsonEvent::StartObject => Top::Object,
                JsonEvent::StartArray => Top::Other("an array"),
                JsonEvent::ValueString => Top::Other("a string"),
                JsonEvent::ValueInt | JsonEvent::ValueFloat => Top::Other("a number"),
                JsonEvent::ValueTrue | JsonEvent::ValueFalse => Top::Other("a boolean"),
                _ => Top::Other("null"),
            };
        }
        match event {
            JsonEvent::StartObject | JsonEvent::StartArray => {
                if self.depth == MAX_DEPTH {
                    return Err(not_json(&format!("nested more than {MAX_DEPTH} deep"), at));
                }
                self.depth += 1;
                if self.depth == 2 && self.wants_quote() {
                    self.quote = Some(Quote::default());
                }
                if let Some(quote) = &mut self.quote {
                    quote.event(event, "", false);
                }
            }
            JsonEvent::EndObject | JsonEvent::EndArray => {
                if let Some(quote) = &mut self.quote {
                    quote.event(event, "", false);
                }
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 1 {
                    if let Some(quote) = self.quote.take() {
                        self.assign(quote.finish());
                    }
                    self.member = Member::None;
                }
            }
            JsonEvent::FieldName => {
                if let Some(quote) = &mut self.quote {
                    quote.event(event, text()?, cut);
                } else if self.depth == 1 && self.top == Top::Object {
                    self.member = match text()? {
                        "action" => Member::Action,
                        "value" => Member::Value,
                        _ => Member::Other,
                    };
                }
            }
            JsonEvent::NeedMoreInput => {}
            _ => {
                // A scalar: skipped unless it is (in) the value of a top-level action/value.
                let wanted = self.quote.is_some()
                    || (self.depth == 1 && self.top == Top::Object && self.wants_quote());
                if !wanted {
                    return Ok(());
                }
                let text = match event {
                    JsonEvent::ValueString | JsonEvent::ValueInt | JsonEvent::ValueFloat => text()?,
                    _ => "",
                };
                if let Some(quote) = &mut self.quote {
                    quote.event(event, text, cut);
                } else if event == JsonEvent::ValueString {
                    self.assign(Field::Str(text.to_owned()));
                } else {
                    let mut quote = Quote::default();
                    quote.event(event, text, cut);
                    self.assign(quote.finish());
                }
            }
        }
        Ok(())
    }

    fn wants_quote(&self) -> bool {
        self.top == Top::Object && matches!(self.member, Member::Action | Member::Value)
    }
}

/// Decodes one `text/json` content incrementally: [`feed`](Self::feed) it the content's
/// bytes as they arrive, then [`finish`](Self::finish) once all `content-length` bytes
/// are in. Holds the parser's fixed buffers, the request's own strings, and no other
/// copy of the content.
pub struct RequestDecoder {
    parser: JsonParser<PushJsonFeeder>,
    lex: Lex,
    doc: Doc,
    /// Content bytes consumed so far (for error positions).
    offset: usize,
    /// The last string or number given to the parser was only a prefix of it.
    last_cut: bool,
    /// The content's last byte and how many ASCII letters it ends with (up to 5), to
    /// catch what actson lets through at the end of the input (see `finish`).
    last_byte: u8,
    tail_letters: u8,
}

impl fmt::Debug for RequestDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestDecoder")
            .field("lex", &self.lex)
            .field("doc", &self.doc)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestDecoder {
    pub fn new() -> Self {
        let options = JsonParserOptionsBuilder::default()
            // Past our own limit, so that ours is the one that reports it.
            .with_max_depth(MAX_DEPTH + 2)
            .build();
        RequestDecoder {
            parser: JsonParser::new_with_options(PushJsonFeeder::new(), options),
            lex: Lex::Outside { digits: 0 },
            doc: Doc::default(),
            offset: 0,
            last_cut: false,
            last_byte: 0,
            tail_letters: 0,
        }
    }

    /// Back to the state of a new decoder, keeping the parser's buffers.
    pub fn reset(&mut self) {
        self.parser.reset_fully();
        self.lex = Lex::Outside { digits: 0 };
        self.doc = Doc::default();
        self.offset = 0;
        self.last_cut = false;
        self.last_byte = 0;
        self.tail_letters = 0;
    }

    /// Consumes content bytes; returns how many. All of `bytes` is used except, when
    /// `is_end` is false, a UTF-8 character cut by the end of `bytes` (at most 3 bytes):
    /// present those again with what follows. `is_end` says `bytes` ends the content.
    pub fn feed(&mut self, bytes: &[u8], is_end: bool) -> Result<usize, FrameError> {
        // UTF-8 is checked before the grammar, byte for byte: whichever error comes first
        // in the content is the one reported, however the content was split.
        let (valid, invalid) = match std::str::from_utf8(bytes) {
            Ok(_) => (bytes.len(), false),
            Err(e) => (e.valid_up_to(), e.error_len().is_some() || is_end),
        };
        let text = bytes.get(..valid).unwrap_or_default();
        self.json_bytes(text)?;
        if let Some(&last) = text.last() {
            let letters = text
                .iter()
                .rev()
                .take(5)
                .take_while(|b| b.is_ascii_alphabetic());
            let letters = letters.count() as u8;
            self.tail_letters = if usize::from(letters) == text.len() {
                (self.tail_letters + letters).min(5)
            } else {
                letters
            };
            self.last_byte = last;
        }
        if invalid {
            return Err(FrameError::ContentNotUtf8);
        }
        Ok(valid)
    }

    /// Ends the content (all `content-length` bytes have been fed): the request, or why
    /// the content is not one.
    pub fn finish(&mut self) -> Result<Request, FrameError> {
        self.parser.feeder.done();
        let at = self.offset;
        loop {
            match self.parser.next_event() {
                Ok(None) => break,
                Ok(Some(JsonEvent::NeedMoreInput)) => {
                    return Err(not_json("unexpected end of content", at))
                }
                Ok(Some(event)) => {
                    if self.cut_short_at_end(event) {
                        return Err(not_json("unexpected end of content", at));
                    }
                    self.event(event, at)?
                }
                Err(e) => return Err(parser_error(e, at)),
            }
        }
        match self.doc.top {
            Top::Object => Ok(std::mem::take(&mut self.doc.request)),
            Top::Other(kind) => Err(FrameError::ContentNotObject(kind)),
            Top::Unknown => Err(not_json("no value", at)),
        }
    }

    /// Whether `event`, produced by the end of the input, is a top-level literal or
    /// number the content stops in the middle of. actson 2.1 turns its state at the end
    /// into an event without checking that the token is complete: `tru`, `fals`, `nul`,
    /// `1e` and `1e+` come out as values. (Followed by anything, they are refused.)
    fn cut_short_at_end(&self, event: JsonEvent) -> bool {
        match event {
            JsonEvent::ValueTrue | JsonEvent::ValueNull => self.tail_letters < 4,
            JsonEvent::ValueFalse => self.tail_letters < 5,
            JsonEvent::ValueFloat => matches!(self.last_byte, b'e' | b'E' | b'+' | b'-'),
            _ => false,
        }
    }

    /// Passes valid UTF-8 text through the filter to the parser.
    fn json_bytes(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        let mut i = 0;
        while i < bytes.len() {
            i = match self.lex {
                Lex::Outside { digits } => self.outside(bytes, i, digits)?,
                Lex::InString(string) => self.in_string(bytes, i, string)?,
            };
        }
        self.offset += bytes.len();
        Ok(())
    }

    /// Between tokens: everything goes to the parser up to a string's opening quote
    /// (which decides how much of the string it gets), except the digits of a long run.
    fn outside(
        &mut self,
        bytes: &[u8],
        start: usize,
        mut digits: usize,
    ) -> Result<usize, FrameError> {
        let mut i = start;
        while let Some(&b) = bytes.get(i) {
            if b == b'"' {
                self.pass(bytes, start, i)?;
                // Events are up to date here: the parser has seen everything before the quote.
                let whole = self.doc.wants_whole_string();
                self.pass(bytes, i, i + 1)?;
                self.lex = Lex::InString(StringLex {
                    whole,
                    passed: 0,
                    cut: false,
                    escape: Escape::None,
                    high_surrogate: false,
                });
                return Ok(i + 1);
            }
            if b.is_ascii_digit() {
                digits += 1;
                if digits > DIGITS_PREFIX {
                    // A digit where digits are allowed leaves the parser's state as it
                    // was, so leaving the rest of the run out changes nothing it checks.
                    self.pass(bytes, start, i)?;
                    let run = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
                    self.last_cut = true;
                    self.lex = Lex::Outside { digits };
                    return Ok(i + run);
                }
            } else {
                digits = 0;
            }
            i += 1;
        }
        self.pass(bytes, start, i)?;
        self.lex = Lex::Outside { digits };
        Ok(i)
    }

    /// Inside a string: checks escapes and control characters itself (they may be
    /// withheld from the parser), passes the body (or a prefix of it) and the closing quote.
    fn in_string(
        &mut self,
        bytes: &[u8],
        start: usize,
        mut s: StringLex,
    ) -> Result<usize, FrameError> {
        let mut i = start;
        // Where the part passed to the parser ends within this slice.
        let mut pass_end = if s.cut { start } else { bytes.len() };
        while let Some(&b) = bytes.get(i) {
            if !s.whole
                && !s.cut
                && s.passed + (i - start) >= STRING_PREFIX
                && s.escape == Escape::None
                && !s.high_surrogate
                && !is_continuation(b)
                && b != b'"'
            {
                // Cut between whole characters and outside any escape, so the prefix the
                // parser sees is a valid string.
                s.cut = true;
                pass_end = i;
            }
            let at = self.offset + i;
            match s.escape {
                Escape::None => match b {
                    b'"' => {
                        if s.high_surrogate {
                            return Err(lone_surrogate(at));
                        }
                        let body_end = if s.cut { pass_end } else { i };
                        self.pass(bytes, start, body_end)?;
                        self.last_cut = s.cut;
                        self.pass(bytes, i, i + 1)?;
                        self.lex = Lex::Outside { digits: 0 };
                        return Ok(i + 1);
                    }
                    b'\\' => s.escape = Escape::Backslash,
                    0x00..=0x1f => return Err(not_json("control character in a string", at)),
                    _ if s.high_surrogate => return Err(lone_surrogate(at)),
                    _ => {}
                },
                Escape::Backslash => match b {
                    b'u' => s.escape = Escape::Hex { left: 4, code: 0 },
                    _ if s.high_surrogate => return Err(lone_surrogate(at)),
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                        s.escape = Escape::None
                    }
                    _ => return Err(not_json("invalid escape", at)),
                },
                Escape::Hex { left, code } => {
                    let digit = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        _ => return Err(not_json("invalid \\u escape", at)),
                    };
                    let code = code << 4 | u16::from(digit);
                    if left > 1 {
                        s.escape = Escape::Hex {
                            left: left - 1,
                            code,
                        };
                    } else {
                        s.escape = Escape::None;
                        // serde_json's rule: a high surrogate must be followed at once by
                        // a low one, and a low one cannot stand alone.
                        match (s.high_surrogate, code) {
                            (true, 0xDC00..=0xDFFF) => s.high_surrogate = false,
                            (false, 0xD800..=0xDBFF) => s.high_surrogate = true,
                            (_, 0xD800..=0xDFFF) | (true, _) => return Err(lone_surrogate(at)),
                            (false, _) => {}
                        }
                    }
                }
            }
            i += 1;
        }
        let end = if s.cut { pass_end } else { i };
        self.pass(bytes, start, end)?;
        s.passed += end - start;
        self.lex = Lex::InString(s);
        Ok(i)
    }

    /// Gives `bytes[from..to]` to the parser and handles the events it produces.
    fn pass(&mut self, bytes: &[u8], from: usize, to: usize) -> Result<(), FrameError> {
        let mut at = from;
        while at < to {
            let chunk = bytes.get(at..to).unwrap_or_default();
            let pushed = self.parser.feeder.push_bytes(chunk);
            self.drain(self.offset + at)?;
            at += pushed;
        }
        Ok(())
    }

    /// Takes every event the parser can produce from what it was given; `at` is the
    /// content position of the first byte it had not parsed yet.
    fn drain(&mut self, at: usize) -> Result<(), FrameError> {
        let before = self.parser.parsed_bytes();
        loop {
            let event = self.parser.next_event();
            // The byte the parser stopped at, for error positions.
            let here = (at + self.parser.parsed_bytes()).saturating_sub(before + 1);
            match event {
                Ok(Some(JsonEvent::NeedMoreInput)) | Ok(None) => return Ok(()),
                Ok(Some(event)) => self.event(event, here)?,
                Err(e) => return Err(parser_error(e, here)),
            }
        }
    }

    fn event(&mut self, event: JsonEvent, at: usize) -> Result<(), FrameError> {
        let parser = &self.parser;
        // Valid UTF-8 by construction (checked on the way in, cut between characters);
        // refused as such all the same if it were not.
        let text = || parser.current_str().map_err(|_| FrameError::ContentNotUtf8);
        self.doc.event(event, text, self.last_cut, at)?;
        if !matches!(event, JsonEvent::NeedMoreInput) {
            self.last_cut = false;
        }
        Ok(())
    }
}

/// A small content that is already all here, decoded in one go by serde_json straight
/// from the input (keys compared in place, other members checked and dropped, nothing
/// built but the two strings). Only a plain request qualifies: an object whose `action`
/// and `value` are strings or absent. For anything else, and for every error, it says
/// `None` and [`RequestDecoder`] decides, so the answer and every error message never
/// depend on how the content arrived. It accepts what the incremental decoder accepts
/// (serde_json's limits are the ones that decoder copies); the tests hold them together.
pub fn decode_whole(content: &[u8]) -> Option<Request> {
    serde_json::from_slice::<Plain>(content)
        .ok()
        .map(|plain| plain.0)
}

/// The request `decode_whole` reads: a JSON object (an array is not read positionally).
struct Plain(Request);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PlainVisitor)
    }
}

struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = Plain;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Plain, A::Error> {
        let mut request = Request::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Action => &mut request.action,
                Key::Value => &mut request.value,
                Key::Other => {
                    map.next_value::<Skip>()?;
                    continue;
                }
            };
            // The last one wins, as in the incremental decoder; a non-string is an error
            // here, so that the incremental decoder quotes it.
            *slot = Some(Field::Str(map.next_value::<Text>()?.0));
        }
        Ok(Plain(request))
    }
}

/// A member name of the top-level object, as far as a request cares.
enum Key {
    Action,
    Value,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "action" => Key::Action,
                    "value" => Key::Value,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A JSON string and nothing else (not even null).
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text, E> {
                Ok(Text(text.to_owned()))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Text, E> {
                Ok(Text(text))
            }
        }
        deserializer.deserialize_string(TextVisitor)
    }
}

/// Any JSON value, parsed (strings decoded, so checked as strictly as for a
/// `serde_json::Value`) and dropped; `serde::de::IgnoredAny` would skip strings without
/// checking their `\u` escapes.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

fn is_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

fn not_json(what: &str, at: usize) -> FrameError {
    FrameError::ContentNotJson(format!("{what} at byte {at}"))
}

fn lone_surrogate(at: usize) -> FrameError {
    not_json("lone surrogate in a \\u escape", at)
}

fn parser_error(e: ParserError, at: usize) -> FrameError {
    match e {
        ParserError::IllegalInput(b) => not_json(&format!("illegal byte 0x{b:02x}"), at),
        ParserError::SyntaxError => not_json("syntax error", at),
        ParserError::NoMoreInput => not_json("unexpected end of content", at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `content` presented in pieces of `step` bytes the way the server presents
    /// them: what a call left unconsumed comes again with the next piece.
    fn decode_in_steps(content: &[u8], step: usize) -> Result<Request, FrameError> {
        let mut decoder = RequestDecoder::new();
        let mut at = 0;
        let mut end = 0;
        while at < content.len() {
            end = (end + step).min(content.len());
            at += decoder.feed(&content[at..end], end == content.len())?;
        }
        decoder.finish()
    }

    fn str_field(text: &str) -> Option<Field> {
        Some(Field::Str(text.to_owned()))
    }

    /// The top-level action and value become the typed request; everything else,
    /// including look-alike keys deeper down, is skipped.
    #[test]
    fn top_level_members_make_the_request() {
        let content =
            br#"{"value": {"action": "no"}, "action": "search", "x": ["value"], "value": "ring"}"#;
        assert_eq!(
            decode_in_steps(content, content.len()),
            Ok(Request {
                action: str_field("search"),
                value: str_field("ring"),
            })
        );
        assert_eq!(decode_in_steps(b"{}", 2), Ok(Request::default()));
    }

    /// Where the one-go decoder takes a content, it makes the same request of it as the
    /// incremental decoder; what it does not take, the incremental decoder decides.
    #[test]
    fn whole_decoding_agrees_on_plain_requests() {
        for content in [
            &br#"{"action": "search", "value": "ring"}"#[..],
            br#"{"value": "\ud83d\udc36", "x": [1, {"action": 2}], "action": "search", "value": "x\n"}"#,
            b"{}",
        ] {
            assert_eq!(
                decode_whole(content).map(Ok),
                Some(decode_in_steps(content, 1))
            );
        }
        for content in [
            &br#"{"action": null}"#[..],
            br#"{"action": ["search"]}"#,
            br#"["search", "ring"]"#,
            br#"{"x": "\ud800", "action": "search"}"#,
            br#"{"x": "\udc00"}"#,
            br#"{"x": 1e400}"#,
            b"{} x",
            b"{\"x\": \"\xff\"}",
        ] {
            assert_eq!(
                decode_whole(content),
                None,
                "{}",
                String::from_utf8_lossy(content)
            );
        }
    }

    /// Any piece size gives the same request or the same error, including pieces that
    /// cut UTF-8 characters, escapes and the point where a long string is cut.
    #[test]
    fn every_piece_size_decodes_the_same() {
        let long = "é".repeat(200);
        let contents = [
            format!(r#"{{"pad": "{long}\ud83d\udc36", "action": "se\u0061rch", "value": "🐶"}}"#),
            format!(r#"{{"action": ["{long}", 1.5e3, {{"k": null}}], "value": 12345}}"#),
            format!(r#"{{"value": "{long}\ud83d"}}"#),
            r#"[1, 2, {"a": "b"}]"#.to_owned(),
        ];
        for content in &contents {
            let whole = decode_in_steps(content.as_bytes(), content.len());
            for step in 1..40 {
                assert_eq!(
                    decode_in_steps(content.as_bytes(), step),
                    whole,
                    "{content} in steps of {step}"
                );
            }
        }
    }
}
