//! The two admin calls rdkafka's Rust API does not wrap, CreateAcls and
//! AlterUserScramCredentials, called through librdkafka's C API (the same librdkafka the rest
//! of fleetstream links). This is the workspace's only `unsafe` code: each call owns what it
//! allocates and frees it on every path (the `Owned*` guards below), and reads librdkafka's
//! results only while the event that holds them is alive.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka_sys as sys;

use crate::access::{Acl, Operation, Pattern, Resource};

/// Creates ACL bindings (existing identical ones are left as they are: Kafka ignores
/// duplicates). Fails with the first binding Kafka refused.
pub fn create_acls<C: ClientContext>(admin: &AdminClient<C>, acls: &[Acl], timeout: Duration) -> anyhow::Result<()> {
    let mut bindings = Vec::with_capacity(acls.len());
    let mut guard = OwnedBindings(Vec::new());
    for acl in acls {
        let name = CString::new(acl.name.as_str()).context("ACL resource name with a NUL byte")?;
        let principal = CString::new(acl.principal.as_str()).context("principal with a NUL byte")?;
        let host = CString::new("*").context("host")?;
        let mut errstr = [0 as std::os::raw::c_char; 512];
        // SAFETY: every pointer is a valid NUL-terminated string or buffer for the call.
        let binding = unsafe {
            sys::rd_kafka_AclBinding_new(
                resource(acl.resource),
                name.as_ptr(),
                pattern(acl.pattern),
                principal.as_ptr(),
                host.as_ptr(),
                operation(acl.operation),
                sys::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if binding.is_null() {
            // SAFETY: librdkafka wrote a NUL-terminated message into errstr.
            let message = unsafe { CStr::from_ptr(errstr.as_ptr()) }.to_string_lossy().into_owned();
            bail!("invalid ACL {acl}: {message}");
        }
        guard.0.push(binding);
        bindings.push(binding);
    }
    let event = call(admin, sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS, timeout, |rk, options, queue| {
        // SAFETY: the bindings and options are alive for the call; librdkafka copies them.
        unsafe { sys::rd_kafka_CreateAcls(rk, bindings.as_mut_ptr(), bindings.len(), options, queue) }
    })?;
    // SAFETY: the event is a CreateAcls result (or null), alive while `event` is.
    let result = unsafe { sys::rd_kafka_event_CreateAcls_result(event.0) };
    if result.is_null() {
        bail!("CreateAcls: unexpected answer from librdkafka");
    }
    let mut count = 0;
    // SAFETY: as above; the array has `count` entries.
    let results = unsafe { sys::rd_kafka_CreateAcls_result_acls(result, &mut count) };
    for (i, acl) in acls.iter().enumerate().take(count) {
        // SAFETY: i < count.
        let error = unsafe { sys::rd_kafka_acl_result_error(*results.add(i)) };
        if let Some(message) = error_message(error) {
            bail!("Kafka refused the ACL {acl}: {message}");
        }
    }
    Ok(())
}

/// Creates or replaces the SCRAM-SHA-512 and SCRAM-SHA-256 credentials of each
/// `(user, password)`.
pub fn upsert_scram_users<C: ClientContext>(admin: &AdminClient<C>, users: &[(String, String)], timeout: Duration) -> anyhow::Result<()> {
    // Kafka takes one alteration per user and request: one request per mechanism.
    for mechanism in [sys::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_512, sys::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_256] {
        upsert_scram(admin, users, mechanism, timeout)?;
    }
    Ok(())
}

fn upsert_scram<C: ClientContext>(
    admin: &AdminClient<C>,
    users: &[(String, String)],
    mechanism: sys::rd_kafka_ScramMechanism_t,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut alterations = Vec::new();
    let mut guard = OwnedAlterations(Vec::new());
    for (user, password) in users {
        let name = CString::new(user.as_str()).context("user name with a NUL byte")?;
        {
            // SAFETY: valid pointers and lengths; a null salt makes librdkafka draw a random one.
            let alteration = unsafe {
                sys::rd_kafka_UserScramCredentialUpsertion_new(
                    name.as_ptr(),
                    mechanism,
                    8192,
                    password.as_ptr(),
                    password.len(),
                    std::ptr::null(),
                    0,
                )
            };
            if alteration.is_null() {
                bail!("cannot make SCRAM credentials for {user}");
            }
            guard.0.push(alteration);
            alterations.push(alteration);
        }
    }
    let event = call(admin, sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS, timeout, |rk, options, queue| {
        // SAFETY: the alterations and options are alive for the call; librdkafka copies them.
        unsafe { sys::rd_kafka_AlterUserScramCredentials(rk, alterations.as_mut_ptr(), alterations.len(), options, queue) }
    })?;
    // SAFETY: the event is an AlterUserScramCredentials result (or null), alive with `event`.
    let result = unsafe { sys::rd_kafka_event_AlterUserScramCredentials_result(event.0) };
    if result.is_null() {
        bail!("AlterUserScramCredentials: unexpected answer from librdkafka");
    }
    let mut count = 0;
    // SAFETY: as above; the array has `count` entries.
    let responses = unsafe { sys::rd_kafka_AlterUserScramCredentials_result_responses(result, &mut count) };
    for i in 0..count {
        // SAFETY: i < count; the user name is a NUL-terminated string owned by the event.
        let (user, error) = unsafe {
            let response = *responses.add(i);
            let user = CStr::from_ptr(sys::rd_kafka_AlterUserScramCredentials_result_response_user(response)).to_string_lossy().into_owned();
            (user, sys::rd_kafka_AlterUserScramCredentials_result_response_error(response))
        };
        if let Some(message) = error_message(error) {
            bail!("Kafka refused the SCRAM credentials of {user}: {message}");
        }
    }
    Ok(())
}

/// Runs one admin call on a temporary queue and waits for its result event.
fn call<C: ClientContext>(
    admin: &AdminClient<C>,
    op: sys::rd_kafka_admin_op_t,
    timeout: Duration,
    start: impl FnOnce(*mut sys::rd_kafka_t, *mut sys::rd_kafka_AdminOptions_t, *mut sys::rd_kafka_queue_t),
) -> anyhow::Result<OwnedEvent> {
    let rk = admin.inner().native_ptr();
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: rk is the admin client's live handle; queue and options are freed by the guards.
    let queue = OwnedQueue(unsafe { sys::rd_kafka_queue_new(rk) });
    let options = OwnedOptions(unsafe { sys::rd_kafka_AdminOptions_new(rk, op) });
    if queue.0.is_null() || options.0.is_null() {
        bail!("librdkafka could not allocate an admin request");
    }
    let mut errstr = [0 as std::os::raw::c_char; 512];
    // SAFETY: valid options and buffer.
    unsafe { sys::rd_kafka_AdminOptions_set_request_timeout(options.0, millis, errstr.as_mut_ptr(), errstr.len()) };
    start(rk, options.0, queue.0);
    // SAFETY: the queue is alive; the event returned is owned by the guard.
    let event = OwnedEvent(unsafe { sys::rd_kafka_queue_poll(queue.0, millis.saturating_add(1000)) });
    if event.0.is_null() {
        bail!("no answer from Kafka within {timeout:?}");
    }
    // SAFETY: the event is alive; its error string is owned by it.
    let code = unsafe { sys::rd_kafka_event_error(event.0) };
    if code != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        let message = unsafe { CStr::from_ptr(sys::rd_kafka_event_error_string(event.0)) }.to_string_lossy().into_owned();
        bail!("{message}");
    }
    Ok(event)
}

/// The message of a librdkafka error object, `None` when there is no error.
fn error_message(error: *const sys::rd_kafka_error_t) -> Option<String> {
    if error.is_null() {
        return None;
    }
    // SAFETY: a non-null error owned by the live result event.
    unsafe {
        if sys::rd_kafka_error_code(error) == sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        Some(CStr::from_ptr(sys::rd_kafka_error_string(error)).to_string_lossy().into_owned())
    }
}

fn resource(r: Resource) -> sys::rd_kafka_ResourceType_t {
    match r {
        Resource::Topic => sys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
        Resource::Group => sys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP,
        Resource::TransactionalId => sys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
    }
}

fn pattern(p: Pattern) -> sys::rd_kafka_ResourcePatternType_t {
    match p {
        Pattern::Literal => sys::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        Pattern::Prefixed => sys::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
    }
}

fn operation(o: Operation) -> sys::rd_kafka_AclOperation_t {
    match o {
        Operation::Read => sys::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_READ,
        Operation::Write => sys::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_WRITE,
        Operation::Describe => sys::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_DESCRIBE,
    }
}

struct OwnedQueue(*mut sys::rd_kafka_queue_t);
impl Drop for OwnedQueue {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by rd_kafka_queue_new, destroyed once.
            unsafe { sys::rd_kafka_queue_destroy(self.0) }
        }
    }
}

struct OwnedOptions(*mut sys::rd_kafka_AdminOptions_t);
impl Drop for OwnedOptions {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by rd_kafka_AdminOptions_new, destroyed once.
            unsafe { sys::rd_kafka_AdminOptions_destroy(self.0) }
        }
    }
}

struct OwnedEvent(*mut sys::rd_kafka_event_t);
impl Drop for OwnedEvent {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: returned by rd_kafka_queue_poll, destroyed once.
            unsafe { sys::rd_kafka_event_destroy(self.0) }
        }
    }
}

struct OwnedBindings(Vec<*mut sys::rd_kafka_AclBinding_t>);
impl Drop for OwnedBindings {
    fn drop(&mut self) {
        for b in &self.0 {
            // SAFETY: each created by rd_kafka_AclBinding_new, destroyed once.
            unsafe { sys::rd_kafka_AclBinding_destroy(*b) }
        }
    }
}

struct OwnedAlterations(Vec<*mut sys::rd_kafka_UserScramCredentialAlteration_t>);
impl Drop for OwnedAlterations {
    fn drop(&mut self) {
        for a in &self.0 {
            // SAFETY: each created by rd_kafka_UserScramCredentialUpsertion_new, destroyed once.
            unsafe { sys::rd_kafka_UserScramCredentialAlteration_destroy(*a) }
        }
    }
}
