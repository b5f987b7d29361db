//! App protocol requests: the tutorial's `search` requests, cycling through the four
//! answers of its table. Each connection encodes its requests and the expected responses
//! once; a response is checked by comparing bytes, and only one that differs (another
//! server's JSON spacing, say) is decoded with the app codec and judged by its meaning.

use super::{Answer, Exchange, Progress, ResponseError};
use crate::protocol::app::{self, Content, Decoder};

/// The queries sent, in turn: the tutorial's three known ones and a miss.
const QUERIES: [&str; 4] = ["morpheus", "ring", "🐶", "no such thing"];

/// Content accepted in a response; larger is a broken server, not a search answer.
const MAX_RESPONSE_CONTENT: usize = 1024 * 1024;

/// One connection's prebuilt requests and expected responses.
#[derive(Debug)]
pub struct AppExchange {
    requests: [Box<[u8]>; QUERIES.len()],
    responses: [Box<[u8]>; QUERIES.len()],
    next_request: usize,
    next_response: usize,
    decoder: Decoder,
}

impl Default for AppExchange {
    fn default() -> Self {
        Self::new()
    }
}

impl AppExchange {
    pub fn new() -> Self {
        let frame = |build: &dyn Fn(&mut Vec<u8>) -> Result<(), app::EncodeError>| {
            let mut out = Vec::new();
            // The fields are short constants, far below the header limit.
            build(&mut out).expect("a search frame fits the app protocol's limits");
            out.into_boxed_slice()
        };
        AppExchange {
            requests: QUERIES.map(|q| {
                frame(&|out| app::encode_json_fields(out, &[("action", "search"), ("value", q)]))
            }),
            responses: QUERIES.map(|q| {
                frame(&|out| app::encode_json_fields(out, &[("result", &app::search(q))]))
            }),
            next_request: 0,
            next_response: 0,
            decoder: Decoder::new(MAX_RESPONSE_CONTENT),
        }
    }

    /// The slow path: decode whatever the server sent and judge it by its meaning.
    fn decode_response(&mut self, input: &[u8]) -> Result<Progress, ResponseError> {
        let query = QUERIES[self.next_response];
        let (frame, used) = match self.decoder.decode(input) {
            Ok(Some(decoded)) => decoded,
            Ok(None) => return Ok(Progress::NeedMore { used: 0 }),
            Err(e) => return Err(ResponseError(format!("malformed app response: {e}"))),
        };
        let Content::Json(fields) = &frame.content else {
            return Err(ResponseError(format!(
                "app response of type {:?} to a JSON search",
                frame.header.content_type
            )));
        };
        let accepted = match fields.get("result").and_then(|v| v.as_str()) {
            Some(result) if result == app::search(query) => true,
            Some(result) => {
                return Err(ResponseError(format!(
                    "wrong answer to search {query:?}: {result:?}"
                )))
            }
            // An {"error": ...} reply is well framed: a failed request, not a broken stream.
            None => false,
        };
        self.next_response = (self.next_response + 1) % QUERIES.len();
        Ok(Progress::Done {
            used,
            answer: Answer::plain(accepted),
        })
    }
}

impl Exchange for AppExchange {
    fn write_request(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.requests[self.next_request]);
        self.next_request = (self.next_request + 1) % QUERIES.len();
    }

    fn read_response(&mut self, input: &[u8]) -> Result<Progress, ResponseError> {
        let expected = &self.responses[self.next_response];
        if input.starts_with(expected) {
            self.next_response = (self.next_response + 1) % QUERIES.len();
            return Ok(Progress::Done {
                used: expected.len(),
                answer: Answer::plain(true),
            });
        }
        if expected.starts_with(input) {
            // Exactly what we expect, so far: wait for the rest.
            return Ok(Progress::NeedMore { used: 0 });
        }
        self.decode_response(input)
    }

    fn max_pending(&self) -> usize {
        2 + usize::from(u16::MAX) + MAX_RESPONSE_CONTENT
    }

    fn mid_response(&self) -> bool {
        // A response is consumed only once whole; a part of one is held unconsumed.
        false
    }

    fn reset(&mut self) {
        self.next_response = self.next_request;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::app::App;
    use crate::protocol::{Produced, Protocol};

    /// What our own app server answers to `requests`, through its pure protocol code.
    fn serve(requests: &[u8]) -> Vec<u8> {
        let mut server = App::default();
        let mut produced = Produced::default();
        let mut out = produced.output();
        let mut session = server.open(&crate::net::Peer::Unix, &mut out);
        let (used, _) = server.on_input(&mut session, requests, &mut out);
        assert_eq!(used, requests.len());
        produced.reply.to_vec()
    }

    /// Eight pipelined requests: every answer from the server is accepted at every split
    /// of the response stream into two reads.
    #[test]
    fn answers_of_our_server_are_accepted_at_every_split() {
        let mut client = AppExchange::new();
        let mut requests = Vec::new();
        for _ in 0..8 {
            client.write_request(&mut requests);
        }
        let stream = serve(&requests);
        for split in 0..=stream.len() {
            let mut client = AppExchange::new();
            let (mut held, mut done) = (Vec::new(), 0);
            for piece in [&stream[..split], &stream[split..]] {
                held.extend_from_slice(piece);
                loop {
                    match client.read_response(&held).unwrap() {
                        Progress::Done { used, answer } => {
                            assert!(answer.accepted);
                            held.drain(..used);
                            done += 1;
                        }
                        Progress::NeedMore { used } => {
                            held.drain(..used);
                            break;
                        }
                    }
                }
            }
            assert_eq!(done, 8, "split at {split}");
        }
    }

    /// A differently spaced but equivalent answer is accepted; a wrong one is an error;
    /// an error reply is a failed request.
    #[test]
    fn responses_are_judged_by_meaning() {
        let mut client = AppExchange::new();
        let mut spaced = Vec::new();
        app::encode(
            &mut spaced,
            "text/json",
            "utf-8",
            &[br#"{ "result" : "Follow the white rabbit. \ud83d\udc30" }"#],
        )
        .unwrap();
        assert_eq!(
            client.read_response(&spaced).unwrap(),
            Progress::Done {
                used: spaced.len(),
                answer: Answer::plain(true)
            }
        );
        let mut wrong = Vec::new();
        app::encode_json_fields(&mut wrong, &[("result", "Follow the black rabbit.")]).unwrap();
        assert!(
            client.read_response(&wrong).is_err(),
            "second query is \"ring\""
        );
        let mut client = AppExchange::new();
        let mut error = Vec::new();
        app::encode_error(&mut error, "server busy").unwrap();
        assert_eq!(
            client.read_response(&error).unwrap(),
            Progress::Done {
                used: error.len(),
                answer: Answer::plain(false)
            }
        );
    }
}
