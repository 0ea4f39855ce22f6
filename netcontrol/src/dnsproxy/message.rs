//! DNS messages, through hickory-proto: what a query asks, the refusal netcontrol answers with,
//! and the addresses an upstream answer carries.

use std::{net::IpAddr, time::Duration};

pub use crate::policy::Refusal;

use hickory_resolver::proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{RData, RecordType},
};

/// The one question of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Lower case, without the trailing dot ("" for the root).
    pub name: String,
    pub qtype: RecordType,
}

/// Why a query is not answered from upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Not even a header: drop it.
    Unreadable,
    /// A header, but not one question of a standard query: FORMERR.
    NotOneQuestion { id: u16, op_code: OpCode },
}

pub fn question(query: &[u8]) -> Result<Question, Malformed> {
    let msg = Message::from_vec(query).map_err(|_| Malformed::Unreadable)?;
    let bad = Malformed::NotOneQuestion { id: msg.id(), op_code: msg.op_code() };
    if msg.message_type() != MessageType::Query
        || msg.op_code() != OpCode::Query
        || msg.queries().len() != 1
    {
        return Err(bad);
    }
    let q = &msg.queries()[0];
    let name = q.name().to_lowercase().to_ascii();
    let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
    Ok(Question { id: msg.id(), name, qtype: q.query_type() })
}

/// The answer to a query netcontrol does not forward: the question echoed, no records.
pub fn refusal(query: &[u8], how: Refusal) -> Option<Vec<u8>> {
    let code = match how {
        Refusal::NxDomain => ResponseCode::NXDomain,
        Refusal::Refused => ResponseCode::Refused,
    };
    reply(query, code)
}

/// A reply with just a response code (SERVFAIL when upstream failed, FORMERR, ...).
pub fn reply(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut r = Message::error_msg(msg.id(), msg.op_code(), code);
    r.set_recursion_desired(msg.recursion_desired());
    r.set_recursion_available(true);
    for q in msg.queries() {
        r.add_query(q.clone());
    }
    r.to_vec().ok()
}

/// FORMERR for a message that has a header but is not a usable query.
pub fn format_error(id: u16, op_code: OpCode) -> Option<Vec<u8>> {
    Message::error_msg(id, op_code, ResponseCode::FormErr).to_vec().ok()
}

/// The addresses in an upstream answer, each with its TTL (bounded by the TTLs of the CNAMEs
/// before it). None if the answer cannot be read or does not answer `q`.
pub fn addresses(answer: &[u8], q: &Question) -> Option<Vec<(IpAddr, Duration)>> {
    let msg = Message::from_vec(answer).ok()?;
    if msg.id() != q.id || msg.message_type() != MessageType::Response {
        return None;
    }
    let asked = msg.queries().first()?;
    let asked_name = asked.name().to_lowercase().to_ascii();
    if asked_name.strip_suffix('.').unwrap_or(&asked_name) != q.name
        || asked.query_type() != q.qtype
    {
        return None;
    }
    let chain = msg
        .answers()
        .iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .map(|r| r.ttl())
        .min()
        .unwrap_or(u32::MAX);
    Some(
        msg.answers()
            .iter()
            .filter_map(|r| {
                let ip: IpAddr = match r.data() {
                    RData::A(a) => a.0.into(),
                    RData::AAAA(a) => a.0.into(),
                    _ => return None,
                };
                Some((ip, Duration::from_secs(u64::from(r.ttl().min(chain)))))
            })
            .collect(),
    )
}

/// The response code of an answer, for statistics.
pub fn response_code(answer: &[u8]) -> Option<ResponseCode> {
    Message::from_vec(answer).ok().map(|m| m.response_code())
}

#[cfg(test)]
pub mod tests {
    use hickory_resolver::proto::{
        op::Query,
        rr::{Name, Record, rdata},
    };

    use super::*;

    pub fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        m.to_vec().expect("encode")
    }

    fn answer(q: &[u8], records: Vec<Record>) -> Vec<u8> {
        let qm = Message::from_vec(q).expect("query");
        let mut m = Message::error_msg(qm.id(), OpCode::Query, ResponseCode::NoError);
        m.add_query(qm.queries()[0].clone());
        for r in records {
            m.add_answer(r);
        }
        m.to_vec().expect("encode")
    }

    #[test]
    fn questions_are_normalized() {
        let q = question(&query("API.GitHub.com.", RecordType::AAAA)).expect("question");
        assert_eq!(
            q,
            Question { id: 4242, name: "api.github.com".into(), qtype: RecordType::AAAA }
        );
        assert_eq!(question(b"\\x00"), Err(Malformed::Unreadable));
    }

    #[test]
    fn refusals_echo_the_question() {
        let q = query("exfil.attacker.test.", RecordType::A);
        for (how, code) in
            [(Refusal::NxDomain, ResponseCode::NXDomain), (Refusal::Refused, ResponseCode::Refused)]
        {
            let r = Message::from_vec(&refusal(&q, how).expect("refusal")).expect("parse");
            assert_eq!(
                (r.id(), r.response_code(), r.message_type()),
                (4242, code, MessageType::Response)
            );
            assert_eq!(r.queries()[0].name().to_ascii(), "exfil.attacker.test.");
            assert!(r.answers().is_empty());
        }
    }

    #[test]
    fn addresses_follow_the_cname_chain_ttl() {
        let q = query("www.example.test.", RecordType::A);
        let name = |s: &str| Name::from_ascii(s).expect("name");
        let a = answer(
            &q,
            vec![
                Record::from_rdata(
                    name("www.example.test."),
                    30,
                    RData::CNAME(rdata::CNAME(name("cdn.example.net."))),
                ),
                Record::from_rdata(
                    name("cdn.example.net."),
                    300,
                    RData::A(rdata::A::new(127, 0, 0, 20)),
                ),
                Record::from_rdata(
                    name("cdn.example.net."),
                    10,
                    RData::A(rdata::A::new(127, 0, 0, 21)),
                ),
            ],
        );
        let qq = question(&q).expect("question");
        assert_eq!(
            addresses(&a, &qq),
            Some(vec![
                ("127.0.0.20".parse().expect("ip"), Duration::from_secs(30)),
                ("127.0.0.21".parse().expect("ip"), Duration::from_secs(10)),
            ])
        );
        // An answer to another question is not believed.
        let other = question(&query("evil.test.", RecordType::A)).expect("question");
        assert_eq!(addresses(&a, &Question { id: 4242, ..other }), None);
        assert_eq!(addresses(&a, &Question { id: 1, ..qq }), None);
    }
}
