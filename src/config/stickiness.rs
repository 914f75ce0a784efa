//! A rollout's `stickiness`: where user ids are read from, the salt of the
//! bucket hash, and the anonymous cookie.

use super::names::{self, HeaderSlots};
use super::raw::{Object, RawStickiness, WholeNumber};
use super::rollout::{AnonymousCookie, Source, Version};
use super::{
    err, ConfigError, DEFAULT_ANONYMOUS_COOKIE_MAX_AGE, MAX_NAME_LEN, MAX_SALT_LEN,
    MAX_USER_ID_SOURCES,
};
use crate::hash::Murmur3;

pub(super) struct Stickiness {
    pub user_ids: Vec<Source>,
    pub salt: String,
    pub salt_is_default: bool,
    pub salted: Murmur3,
    pub anonymous_cookie: Option<AnonymousCookie>,
}

#[inline(never)]
pub(super) fn validate(
    st: RawStickiness,
    versions: &[Version],
    routing_header: &str,
    slots: &mut HeaderSlots,
) -> Result<Stickiness, ConfigError> {
    let n_sources =
        st.user_id_headers.len() + st.user_id_body_fields.len() + st.user_id_cookies.len();
    if n_sources > MAX_USER_ID_SOURCES {
        return err(
            "stickiness",
            format!("userIdHeaders, userIdBodyFields and userIdCookies list more than {MAX_USER_ID_SOURCES} sources"),
        );
    }
    let mut user_ids = Vec::with_capacity(n_sources + 1);
    for (i, h) in st.user_id_headers.iter().enumerate() {
        let field = format!("stickiness.userIdHeaders[{i}]");
        let name = names::header_name(&field, h, false)?;
        if name == routing_header {
            return err(field, "is the routing header, which the filter overwrites");
        }
        let source = Source::Header {
            slot: slots.slot(&field, name)?,
        };
        if user_ids.contains(&source) {
            return err(field, format!("{h:?} is listed twice"));
        }
        user_ids.push(source);
    }
    // Body fields come after the headers (a header id needs no body read)
    // and before the cookies.
    for (i, f) in st.user_id_body_fields.iter().enumerate() {
        let field = format!("stickiness.userIdBodyFields[{i}]");
        if f.is_empty() || f.len() > MAX_NAME_LEN || f.chars().any(char::is_control) {
            return err(
                field,
                format!("a body field name is 1 to {MAX_NAME_LEN} bytes, no control character"),
            );
        }
        let source = Source::BodyField {
            name: f.as_str().into(),
        };
        if user_ids.contains(&source) {
            return err(field, format!("{f:?} is listed twice"));
        }
        user_ids.push(source);
    }
    for (i, c) in st.user_id_cookies.iter().enumerate() {
        let field = format!("stickiness.userIdCookies[{i}]");
        let source = slots.cookie(&field, c)?;
        if user_ids.contains(&source) {
            return err(field, format!("{c:?} is listed twice"));
        }
        user_ids.push(source);
    }
    let anonymous_cookie = match st.anonymous_cookie {
        Some(Object(c)) => {
            let source = slots.cookie("stickiness.anonymousCookie.name", &c.name)?;
            // The generated id is read back like any other user id cookie.
            if !user_ids.contains(&source) {
                user_ids.push(source);
            }
            let max_age_seconds = c
                .max_age_seconds
                .map_or(DEFAULT_ANONYMOUS_COOKIE_MAX_AGE, |WholeNumber(n)| n);
            if max_age_seconds == 0 {
                return err(
                    "stickiness.anonymousCookie.maxAgeSeconds",
                    "must be at least 1",
                );
            }
            Some(AnonymousCookie {
                name: c.name,
                max_age_seconds,
                secure: c.secure,
            })
        }
        None => None,
    };
    let salt_is_default = st.salt.is_none();
    let salt = match st.salt {
        Some(s) => s,
        // The stable (first) version's name: constant through a rollout, and
        // new when the canary is promoted to stable, so each rollout exposes a
        // different set of users first.
        None => versions.first().map(|v| v.name.clone()).unwrap_or_default(),
    };
    if salt.len() > MAX_SALT_LEN {
        return err(
            "stickiness.salt",
            format!("is longer than {MAX_SALT_LEN} bytes"),
        );
    }
    let mut salted = Murmur3::new(0);
    salted.write(salt.as_bytes());
    salted.write(b":");
    Ok(Stickiness {
        user_ids,
        salt,
        salt_is_default,
        salted,
        anonymous_cookie,
    })
}
