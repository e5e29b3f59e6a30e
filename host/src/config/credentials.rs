//! `[[credential]]`: an HTTP(S) token for every remote under a URL prefix
//! (submodules on their own origins included), read when used.

use super::*;

/// One `[[credential]]`: an http(s) prefix without userinfo (a token only
/// travels in clear to loopback), one secret, a usable user name.
pub(super) fn check_credential(
    check: &mut Check,
    line: usize,
    raw: &RawCredential,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Option<OriginCredential> {
    let Some(prefix) = &raw.url_prefix else {
        check.push(
            line,
            "credential",
            "missing field `url_prefix` (e.g. \"https://git.example.com/org/\")",
        );
        return None;
    };
    let shown = crate::redact::url(prefix.get_ref());
    match url::Url::parse(prefix.get_ref()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                check.at(prefix, "credential.url_prefix", format!("`{shown}`: no user or password in the prefix; use username and a secret field"));
                return None;
            }
            if let Err(e) = crate::git::check_token_transport(prefix.get_ref(), false) {
                check.at(prefix, "credential.url_prefix", e);
                return None;
            }
        }
        _ => {
            check.at(
                prefix,
                "credential.url_prefix",
                format!("`{shown}`: an http:// or https:// URL prefix"),
            );
            return None;
        }
    }
    let field = format!("credential \"{shown}\"");
    let secrets: Vec<(&str, &Spanned<String>)> = [
        ("token_env", &raw.token_env),
        ("token_file", &raw.token_file),
        ("password_file", &raw.password_file),
    ]
    .into_iter()
    .filter_map(|(name, v)| v.as_ref().map(|v| (name, v)))
    .collect();
    let secret = match secrets.as_slice() {
        [] => {
            check.push(
                line,
                field,
                "give one of token_env, token_file and password_file",
            );
            return None;
        }
        [("token_env", var)] => {
            check.need_variable(var, format!("{field}.token_env"));
            SecretRef::Env(var.get_ref().clone())
        }
        [(name, file)] => {
            let path = resolve(file.get_ref());
            check.need_file(file, format!("{field}.{name}"), &path);
            SecretRef::File(path)
        }
        [_, (_, second), ..] => {
            check.at(
                *second,
                field,
                "use only one of token_env, token_file and password_file",
            );
            return None;
        }
    };
    if let Some(user) = &raw.username {
        if let Some(why) = crate::git::bad_username(user.get_ref()) {
            check.at(user, format!("{field}.username"), why);
            return None;
        }
    }
    Some(OriginCredential {
        url_prefix: prefix.get_ref().clone(),
        username: raw.username.as_ref().map(|u| u.get_ref().clone()),
        secret,
    })
}
