//! What the agent answered, by request id, for a while: a request that comes
//! again (the client retried it through a second manager, or a manager took
//! over a job whose manager went away) is answered again from here and never
//! run twice. The replay guard refuses the repeat; this turns the refusal
//! into the first answer, under the job id the asking manager uses.
//!
//! Memory only, bounded in count and bytes, oldest forgotten first: after an
//! agent restart a repeat is refused as a replay, unless the outbox still
//! holds its result (same job id).

use crate::protocol::ResultMsg;
use crate::security::PublicKey;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long an answer is kept: past a request's freshness window
/// (`request_window`, 60 s by default) and the client's wait.
pub const KEEP: Duration = Duration::from_secs(600);
/// At most this many answers ...
const MAX_ANSWERS: usize = 10_000;
/// ... and about this many bytes of output.
const MAX_BYTES: usize = 32 << 20;

/// A request's answer, to be sealed again for whoever asks again.
#[derive(Debug, Clone)]
pub struct Answer {
    pub result: ResultMsg,
    /// The client that signed the request: a repeat must be signed by it too.
    pub client: Option<PublicKey>,
    pub signed: bool,
}

#[derive(Debug, Default)]
pub struct Answers {
    by_id: HashMap<String, (Answer, usize)>,
    /// (when kept, request id), oldest first.
    order: VecDeque<(Instant, String)>,
    bytes: usize,
}

impl Answers {
    /// Keep the answer to request `id` (the first one stays).
    pub fn remember(&mut self, id: &str, answer: Answer) {
        if self.by_id.contains_key(id) {
            return;
        }
        // What it holds is about what it encodes to.
        let size = crate::protocol::encode(&answer.result).len() + id.len();
        self.by_id.insert(id.to_owned(), (answer, size));
        self.order.push_back((Instant::now(), id.to_owned()));
        self.bytes += size;
        self.expire();
    }

    /// The answer to request `id`, if it was signed by `client`.
    pub fn recall(&mut self, id: &str, client: Option<&PublicKey>) -> Option<&Answer> {
        self.expire();
        self.by_id
            .get(id)
            .map(|(a, _)| a)
            .filter(|a| a.client.as_ref() == client)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    fn expire(&mut self) {
        while let Some((at, id)) = self.order.front() {
            let over = self.by_id.len() > MAX_ANSWERS || self.bytes > MAX_BYTES;
            if !over && at.elapsed() < KEEP {
                break;
            }
            if let Some((_, size)) = self.by_id.remove(id) {
                self.bytes -= size;
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{KeyPair, Role};

    fn answer(client: &KeyPair, msg: &str) -> Answer {
        let mut result = crate::agent::refusal("web1", "u1", Some("status"), msg.into());
        result.msg = msg.into();
        Answer {
            result,
            client: Some(client.public().clone()),
            signed: true,
        }
    }

    #[test]
    fn answers_are_recalled_for_their_signer_only_and_bounded() {
        let alice = KeyPair::generate(Role::Client, "alice").unwrap();
        let mallory = KeyPair::generate(Role::Client, "mallory").unwrap();
        let mut a = Answers::default();
        a.remember("r1", answer(&alice, "first"));
        a.remember("r1", answer(&alice, "second"));
        assert_eq!(
            a.recall("r1", Some(alice.public())).unwrap().result.msg,
            "first"
        );
        assert!(a.recall("r1", Some(mallory.public())).is_none());
        assert!(a.recall("r1", None).is_none());
        assert!(a.recall("r2", Some(alice.public())).is_none());
        for i in 0..MAX_ANSWERS + 5 {
            a.remember(&format!("x{i}"), answer(&alice, "n"));
        }
        assert_eq!(a.len(), MAX_ANSWERS);
        assert!(
            a.recall("r1", Some(alice.public())).is_none(),
            "oldest forgotten first"
        );
    }
}
