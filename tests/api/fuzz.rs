//! Property tests (proptest): random and adversarial input for the SSE encoder, the id parser, topic and
//! event-name validation, and token verification. Each runs a bounded number of cases (seconds in all).

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use herald::auth::Auth;
use herald::config::Settings;
use herald::domain::{EventId, EventName, TopicName};
use herald::event::Stored;
use proptest::prelude::*;

/// Parses `frames` with the independent SSE parser; the events it dispatches.
fn parse(frames: Vec<Bytes>) -> Vec<eventsource_stream::Event> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::io::Error>));
        stream.eventsource().map(|e| e.expect("parses")).collect().await
    })
}

/// What SSE can carry: line breaks arrive as LF.
fn normalized(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

fn topic() -> TopicName {
    TopicName::parse("t", 8).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_data_or_event_name_makes_a_frame_that_parses_differently(
        data in "(?s).{0,200}",
        data2 in "[a-z\r\n]{0,20}",
        event in proptest::option::of("[^\\p{Cc}]{1,20}"),
        ms in 0u64..u64::MAX,
        seq in 0u64..1000,
    ) {
        let id = EventId { ms, seq };
        let event = event.and_then(|e| EventName::parse(&e, 64).ok());
        let name = event.as_ref().map(|e| e.as_str());
        let first = Stored::new(id, topic(), name, &data);
        let second = Stored::new(EventId { ms, seq: seq + 1 }, topic(), None, &data2);
        // Split the bytes anywhere: the parser must see the same two events.
        let both = [first.frame().clone(), second.frame().clone()].concat();
        let cut = data.len() % (both.len() + 1);
        let events = parse(vec![Bytes::copy_from_slice(&both[..cut]), Bytes::copy_from_slice(&both[cut..])]);
        prop_assert_eq!(events.len(), 2);
        prop_assert_eq!(&events[0].id, &id.to_string());
        prop_assert_eq!(&events[0].event, name.unwrap_or("message"));
        prop_assert_eq!(&events[0].data, &normalized(&data));
        prop_assert_eq!(&events[1].data, &normalized(&data2));
        prop_assert_eq!(&events[1].event, "message");
    }

    #[test]
    fn event_ids_parse_back_exactly(ms in 0u64..10_000_000_000_000_000_000, seq in 0u64..10_000_000_000_000_000_000, junk in "\\PC{0,30}") {
        let id = EventId { ms, seq };
        prop_assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        if let Ok(parsed) = junk.parse::<EventId>() {
            prop_assert_eq!(parsed.to_string().parse::<EventId>(), Ok(parsed));
            prop_assert!(junk.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
        }
    }

    #[test]
    fn topic_validation_refuses_exactly_empty_long_and_control_characters(raw in "(?s).{0,80}", iri in "https://[a-z.]{1,20}/[\\PC]{0,30}") {
        let expected = !raw.is_empty() && raw.len() <= 64 && !raw.chars().any(char::is_control);
        prop_assert_eq!(TopicName::parse(&raw, 64).is_ok(), expected, "{:?}", raw);
        prop_assert!(TopicName::parse(&iri, 128).is_ok());
    }

    #[test]
    fn event_names_never_carry_line_breaks(raw in "(?s).{0,80}") {
        if let Ok(name) = EventName::parse(&raw, 64) {
            prop_assert!(!name.as_str().contains(['\r', '\n', '\0']));
        }
    }

    #[test]
    fn tokens_from_noise_or_tampering_are_refused(noise in "(?s).{0,300}", flip in any::<usize>()) {
        let mut settings = Settings::defaults().unwrap().auth;
        settings.hs_secret = "fuzz-secret-fuzz-secret-fuzz-secret!".into();
        let auth = Auth::from_settings(&settings).unwrap();
        prop_assert!(auth.verify(&noise).is_err());
        let claims = herald::auth::claims(vec!["*".into()], vec![], 600, None);
        let token = herald::auth::mint(settings.hs_secret.expose(), &claims).unwrap();
        prop_assert!(auth.verify(&token).is_ok());
        let mut bytes = token.into_bytes();
        let at = flip % bytes.len();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        // Changing any character of a signed token invalidates it (a change in the base64 padding
        // bits of the last character may decode to the same signature; those are the only exception).
        if at + 1 != tampered.len() {
            prop_assert!(auth.verify(&tampered).is_err());
        }
    }
}
