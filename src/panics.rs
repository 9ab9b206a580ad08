//! Which thread panicked last, and why: the Supervisor's view of crashes.
//!
//! A panic inside an actor either unwinds through its arbiter (the actor dies) or is caught
//! at the boundary of the task it ran in (the actor lives on, its work lost). Both are crashes
//! of that actor. A process-wide panic hook records the message per thread; the Supervisor,
//! which knows each child's thread, takes it when it checks the child.

use std::collections::HashMap;
use std::sync::{Mutex, Once, OnceLock};
use std::thread::ThreadId;

fn table() -> &'static Mutex<HashMap<ThreadId, String>> {
    static TABLE: OnceLock<Mutex<HashMap<ThreadId, String>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Installs the hook (once per process), keeping the previous hook's output.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = payload_message(info.payload());
            let place = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            if let Ok(mut table) = table().lock() {
                table.insert(std::thread::current().id(), format!("{message}{place}"));
            }
            previous(info);
        }));
    });
}

/// The message a panic was raised with (its payload is a `&str` or a `String` when it came from
/// `panic!`).
pub fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    match payload.downcast_ref::<&str>() {
        Some(text) => text.to_string(),
        None => match payload.downcast_ref::<String>() {
            Some(text) => text.clone(),
            None => "a panic with no message".to_string(),
        },
    }
}

/// The last panic on `thread` since the previous call, if any.
pub fn take(thread: ThreadId) -> Option<String> {
    table().lock().ok()?.remove(&thread)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_is_recorded_for_its_thread_once() {
        super::install();
        let handle = std::thread::spawn(|| {
            let id = std::thread::current().id();
            let _ = std::panic::catch_unwind(|| panic!("boom {}", 7));
            id
        });
        let id = handle.join().unwrap();
        let message = super::take(id).unwrap();
        assert!(message.starts_with("boom 7 at "), "{message}");
        assert_eq!(super::take(id), None);
    }
}
