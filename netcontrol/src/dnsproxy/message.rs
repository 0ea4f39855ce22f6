//! DNS messages, through hickory-proto: what a query asks, the query netcontrol forwards in
//! its place, the refusal it answers with, and the answer it releases (its addresses, minus
//! those DNS rebinding protection refuses).

use std::{net::IpAddr, time::Duration};

pub use crate::policy::Refusal;

use hickory_resolver::proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
};

/// The largest UDP answer netcontrol asks for (the DNS flag day's size: no fragmentation).
const MAX_UDP_PAYLOAD: u16 = 1232;

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

pub fn question(query: &[u8]) -> Result<(Question, Message), Malformed> {
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
    Ok((Question { id: msg.id(), name, qtype: q.query_type() }, msg))
}

/// The query netcontrol forwards for a client's: made anew from its question (the name in
/// lower case, class IN), with a fresh id, fixed flags (recursion desired, checking enabled)
/// and, if the client used EDNS, a fixed payload size and its DNSSEC bit. Nothing else the
/// client wrote leaves: not its id, its flags, the case of its name (DNS 0x20), its other
/// sections, its payload size nor EDNS options, each of which could carry data to whoever
/// runs the name's DNS. What still varies is the question itself: the record type, and
/// whether EDNS and DNSSEC are asked for. Returns the id and the bytes.
pub fn upstream_query(client: &Message, q: &Question) -> Option<(u16, Vec<u8>)> {
    let id = fresh_id();
    let name = Name::from_ascii(format!("{}.", q.name)).ok()?;
    let mut query = Query::query(name, q.qtype);
    query.set_query_class(DNSClass::IN);
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_checking_disabled(false);
    m.add_query(query);
    if let Some(e) = client.extensions() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        edns.set_dnssec_ok(e.flags().dnssec_ok);
        m.set_edns(edns);
    }
    Some((id, m.to_vec().ok()?))
}

fn fresh_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: a 2-byte buffer.
    if unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) } == 2 {
        u16::from_ne_bytes(b)
    } else {
        std::process::id() as u16
    }
}

/// What an upstream answer becomes for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// The bytes to send.
    pub bytes: Vec<u8>,
    /// The addresses it carries, each with its TTL (bounded by the CNAME chain's): these are
    /// allowed before it goes.
    pub addresses: Vec<(IpAddr, Duration)>,
    /// The addresses taken out (rebinding protection).
    pub refused: Vec<IpAddr>,
}

/// The answer released to the client for an upstream one (to the query `upstream_id`): the
/// client's id and question as it asked, the upstream's response code, flags and records,
/// minus address records `refuse` says no to. None if the upstream answer cannot be read or
/// does not answer `q`.
pub fn release(
    client: &Message,
    q: &Question,
    upstream_id: u16,
    answer: &[u8],
    refuse: impl Fn(IpAddr) -> bool,
) -> Option<Released> {
    let up = Message::from_vec(answer).ok()?;
    if up.id() != upstream_id || up.message_type() != MessageType::Response {
        return None;
    }
    let asked = up.queries().first()?;
    let asked_name = asked.name().to_lowercase().to_ascii();
    if asked_name.strip_suffix('.').unwrap_or(&asked_name) != q.name
        || asked.query_type() != q.qtype
    {
        return None;
    }
    let address = |r: &Record| -> Option<IpAddr> {
        match r.data() {
            RData::A(a) => Some(a.0.into()),
            RData::AAAA(a) => Some(a.0.into()),
            _ => None,
        }
    };
    let mut refused = Vec::new();
    let mut keep = |r: &Record| match address(r) {
        Some(ip) if refuse(ip) => {
            if !refused.contains(&ip) {
                refused.push(ip);
            }
            false
        }
        _ => true,
    };
    let answers: Vec<Record> = up.answers().iter().filter(|r| keep(r)).cloned().collect();
    let additionals: Vec<Record> = up.additionals().iter().filter(|r| keep(r)).cloned().collect();
    let chain = answers
        .iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .map(|r| r.ttl())
        .min()
        .unwrap_or(u32::MAX);
    let addresses = answers
        .iter()
        .filter_map(|r| Some((address(r)?, Duration::from_secs(u64::from(r.ttl().min(chain))))))
        .collect();
    let mut m = Message::new();
    m.set_id(client.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_response_code(up.response_code())
        .set_authoritative(up.authoritative())
        .set_truncated(up.truncated())
        .set_recursion_desired(client.recursion_desired())
        .set_recursion_available(up.recursion_available())
        .set_authentic_data(up.authentic_data())
        .set_checking_disabled(client.checking_disabled());
    for query in client.queries() {
        m.add_query(query.clone());
    }
    m.add_answers(answers);
    m.add_name_servers(up.name_servers().iter().cloned());
    m.add_additionals(additionals);
    if client.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        edns.set_dnssec_ok(up.extensions().as_ref().is_some_and(|e| e.flags().dnssec_ok));
        m.set_edns(edns);
    }
    Some(Released { bytes: m.to_vec().ok()?, addresses, refused })
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

/// The response code of an answer, for statistics.
pub fn response_code(answer: &[u8]) -> Option<ResponseCode> {
    Message::from_vec(answer).ok().map(|m| m.response_code())
}

#[cfg(test)]
pub mod tests {
    use hickory_resolver::proto::rr::rdata;

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
        let (q, _) = question(&query("API.GitHub.com.", RecordType::AAAA)).expect("question");
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

    /// An upstream answer to `up` (the query netcontrol forwarded).
    fn answer_to(up: &[u8], records: Vec<Record>) -> Vec<u8> {
        answer(up, records)
    }

    #[test]
    fn addresses_follow_the_cname_chain_ttl() {
        let client = query("www.example.test.", RecordType::A);
        let (qq, cm) = question(&client).expect("question");
        let (up_id, up) = upstream_query(&cm, &qq).expect("upstream query");
        let name = |s: &str| Name::from_ascii(s).expect("name");
        let a = answer_to(
            &up,
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
        let r = release(&cm, &qq, up_id, &a, |_| false).expect("released");
        assert_eq!(
            r.addresses,
            vec![
                ("127.0.0.20".parse().expect("ip"), Duration::from_secs(30)),
                ("127.0.0.21".parse().expect("ip"), Duration::from_secs(10)),
            ]
        );
        // The client gets its own id and question back.
        let m = Message::from_vec(&r.bytes).expect("parse");
        assert_eq!(m.id(), 4242);
        assert_eq!(m.queries()[0].name().to_ascii(), "www.example.test.");
        // An answer to another question, or with another id, is not believed.
        let other = question(&query("evil.test.", RecordType::A)).expect("question").0;
        assert_eq!(release(&cm, &other, up_id, &a, |_| false), None);
        assert_eq!(release(&cm, &qq, up_id.wrapping_add(1), &a, |_| false), None);
        // Refused addresses are taken out, and said.
        let r =
            release(&cm, &qq, up_id, &a, |ip| ip == "127.0.0.20".parse::<IpAddr>().expect("ip"))
                .expect("released");
        assert_eq!(r.refused, vec!["127.0.0.20".parse::<IpAddr>().expect("ip")]);
        assert_eq!(r.addresses.len(), 1);
        assert_eq!(Message::from_vec(&r.bytes).expect("parse").answers().len(), 2, "CNAME + one A");
    }

    #[test]
    fn forwarded_queries_carry_nothing_of_the_clients_but_the_question() {
        use hickory_resolver::proto::rr::rdata::opt::{EdnsCode, EdnsOption};
        let mut m = Message::new();
        m.set_id(0xbeef)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false)
            .set_checking_disabled(true);
        m.add_query(Query::query(
            Name::from_ascii("ExFil-Data.Api.Test.").expect("name"),
            RecordType::A,
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(777);
        edns.options_mut()
            .insert(EdnsOption::Unknown(EdnsCode::Padding.into(), b"secret payload".to_vec()));
        m.set_edns(edns);
        m.add_additional(Record::from_rdata(
            Name::from_ascii("x.").expect("name"),
            1,
            RData::A(rdata::A::new(1, 2, 3, 4)),
        ));
        let bytes = m.to_vec().expect("encode");
        let (q, cm) = question(&bytes).expect("question");
        let (id, up) = upstream_query(&cm, &q).expect("query");
        assert!(!up.windows(14).any(|w| w == b"secret payload"), "EDNS options are not forwarded");
        let u = Message::from_vec(&up).expect("parse");
        assert_eq!(u.id(), id);
        assert_eq!(u.queries()[0].name().to_ascii(), "exfil-data.api.test.");
        assert!(u.additionals().is_empty());
        let e = u.extensions().as_ref().expect("EDNS kept");
        assert!(e.options().as_ref().is_empty());
        assert_eq!(e.max_payload(), 1232, "the client's size is not passed on");
        assert!(u.recursion_desired() && !u.checking_disabled(), "nor its flags");
    }
}
