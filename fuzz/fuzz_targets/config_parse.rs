//! Fuzzes `tokensync::config::parse` with arbitrary configuration text.
//!
//! Only parsing is fuzzed: `config::resolve` reads the files that a
//! configuration names, and a fuzzer that names `/dev/zero` as a secret file
//! would exhaust memory. Besides panics, the target checks that an error
//! message is one line and that its line number lies within the text.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // `config::load` reads the file with `read_to_string`, so `parse` only
    // ever receives valid UTF-8.
    let Ok(text) = std::str::from_utf8(input) else { return };
    let Err(error) = tokensync::config::parse(text, "fuzz.yaml") else { return };

    assert!(!error.message.contains('\n'), "the message has several lines: {:?}", error.message);
    if let Some(line) = error.line {
        // One past the last line is where an error at the end of input points.
        let last_line = yaml_line_breaks(text) + 2;
        assert!((1..=last_line).contains(&line), "line {line} is outside 1..={last_line}: {error}");
    }
    let _ = error.to_string();
});

/// Counts line breaks as YAML does: CR LF, a lone CR and a lone LF each end a line.
fn yaml_line_breaks(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut breaks = 0;
    for (index, byte) in bytes.iter().enumerate() {
        let lone_cr = *byte == b'\r' && bytes.get(index + 1) != Some(&b'\n');
        if *byte == b'\n' || lone_cr {
            breaks += 1;
        }
    }
    breaks
}
