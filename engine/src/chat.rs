//! Chat prompt formats for instruct use.
//!
//! There is no Jinja engine: the `tokenizer.chat_template` metadata is only inspected to
//! recognise one of the known formats, which are then rendered by hand.
//!
//! Recognised formats ([`ChatTemplate::detect`]):
//! - [`ChatTemplate::Llama3`]: the template mentions both `<|start_header_id|>` and
//!   `<|end_header_id|>` (Meta LLaMA-3 / 3.1 / 3.2 instruct). Each message renders as
//!   `<|start_header_id|>{role}<|end_header_id|>\n\n{content.trim()}<|eot_id|>`; the
//!   generation prompt is `<|start_header_id|>assistant<|end_header_id|>\n\n`.
//! - [`ChatTemplate::BitNet`]: the template contains `'User: '` (or `User: `) together with
//!   `<|eot_id|>`, or mentions `bitnet` (any case) — microsoft/bitnet-b1.58-2B-4T's
//!   `tokenizer_config.json`. Each message renders as `System: {content}<|eot_id|>`,
//!   `User: {content}<|eot_id|>` or `Assistant: {content}<|eot_id|>` (content not trimmed),
//!   messages with any other role are skipped as in the original template; the generation
//!   prompt is `Assistant: `.
//! - Anything else, including no template: [`ChatTemplate::BitNet`] (the engine's target
//!   model; its official GGUF does not carry a usable Jinja template).
//!   [`ChatTemplate::detect_known`] tells whether a template was actually recognised.
//!
//! The BOS token that the original templates emit first is *not* part of the rendered
//! text: encode with `add_bos = true` (as [`ChatTemplate::encode`] does).

use crate::tokenizer::{Tokenizer, TokenizerError};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (other roles are rendered only by LLaMA-3).
    pub role: String,
    /// Message text.
    pub content: String,
}

impl ChatMessage {
    /// Convenience constructor.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A known chat prompt format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// BitNet b1.58 2B4T: `User: ...<|eot_id|>Assistant: `.
    BitNet,
    /// LLaMA-3 instruct: `<|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>`.
    Llama3,
}

/// A rendered piece: literal text, or a special token that must be encoded as its id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment<'a> {
    Text(String),
    Special(&'a str),
}

const EOT: &str = "<|eot_id|>";
const START_HEADER: &str = "<|start_header_id|>";
const END_HEADER: &str = "<|end_header_id|>";

impl ChatTemplate {
    /// Picks the format for a `tokenizer.chat_template` value; unrecognised or missing
    /// templates fall back to [`ChatTemplate::BitNet`].
    pub fn detect(chat_template: Option<&str>) -> ChatTemplate {
        Self::detect_known(chat_template).unwrap_or(ChatTemplate::BitNet)
    }

    /// Like [`ChatTemplate::detect`], but `None` when the template is not recognised.
    pub fn detect_known(chat_template: Option<&str>) -> Option<ChatTemplate> {
        let t = chat_template?;
        if t.contains(START_HEADER) && t.contains(END_HEADER) {
            return Some(ChatTemplate::Llama3);
        }
        if (t.contains("User: ") && t.contains(EOT)) || t.to_ascii_lowercase().contains("bitnet") {
            return Some(ChatTemplate::BitNet);
        }
        None
    }

    /// Short name (`"bitnet"`, `"llama3"`).
    pub fn name(self) -> &'static str {
        match self {
            ChatTemplate::BitNet => "bitnet",
            ChatTemplate::Llama3 => "llama3",
        }
    }

    fn segments(
        self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Vec<Segment<'static>> {
        let mut segs = Vec::with_capacity(messages.len() * 4 + 3);
        match self {
            ChatTemplate::BitNet => {
                for m in messages {
                    let prefix = match m.role.as_str() {
                        "system" => "System: ",
                        "user" => "User: ",
                        "assistant" => "Assistant: ",
                        _ => continue,
                    };
                    segs.push(Segment::Text(format!("{prefix}{}", m.content)));
                    segs.push(Segment::Special(EOT));
                }
                if add_generation_prompt {
                    segs.push(Segment::Text("Assistant: ".to_owned()));
                }
            }
            ChatTemplate::Llama3 => {
                let header = |segs: &mut Vec<Segment<'static>>, role: &str| {
                    segs.push(Segment::Special(START_HEADER));
                    segs.push(Segment::Text(role.to_owned()));
                    segs.push(Segment::Special(END_HEADER));
                };
                for m in messages {
                    header(&mut segs, &m.role);
                    segs.push(Segment::Text(format!("\n\n{}", m.content.trim())));
                    segs.push(Segment::Special(EOT));
                }
                if add_generation_prompt {
                    header(&mut segs, "assistant");
                    segs.push(Segment::Text("\n\n".to_owned()));
                }
            }
        }
        segs
    }

    /// Renders the conversation as prompt text (without BOS). With
    /// `add_generation_prompt`, ends with the assistant turn opener.
    pub fn render(self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        for s in self.segments(messages, add_generation_prompt) {
            match s {
                Segment::Text(t) => out.push_str(&t),
                Segment::Special(t) => out.push_str(t),
            }
        }
        out
    }

    /// Renders and tokenizes the conversation. The template's special tokens become their
    /// ids while message contents are encoded as plain text, so a `<|eot_id|>` typed by a
    /// user cannot end a turn. For contents without special-token strings the result equals
    /// `tokenizer.encode_with_special(&self.render(..), add_bos, true)`.
    pub fn encode(
        self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        add_bos: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if add_bos {
            ids.push(tokenizer.bos_id().ok_or(TokenizerError::NoBosToken)?);
        }
        for s in self.segments(messages, add_generation_prompt) {
            match s {
                Segment::Text(t) => ids.extend(tokenizer.encode(&t, false)?),
                Segment::Special(t) => match tokenizer.token_id(t) {
                    Some(id) => ids.push(id),
                    // Vocabulary without this control token: fall back to its text.
                    None => ids.extend(tokenizer.encode(t, false)?),
                },
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", " Hi! "),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "2+2?"),
        ]
    }

    #[test]
    fn bitnet_render() {
        let t = ChatTemplate::BitNet;
        assert_eq!(
            t.render(&conv(), true),
            "System: Be brief.<|eot_id|>User:  Hi! <|eot_id|>Assistant: Hello.<|eot_id|>\
             User: 2+2?<|eot_id|>Assistant: "
        );
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")], false),
            "User: x<|eot_id|>"
        );
        // Unknown roles are skipped, as in the original template.
        assert_eq!(
            t.render(&[ChatMessage::new("tool", "x")], true),
            "Assistant: "
        );
        assert_eq!(t.render(&[], false), "");
    }

    #[test]
    fn llama3_render() {
        let t = ChatTemplate::Llama3;
        assert_eq!(
            t.render(&conv()[1..3], true),
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            t.render(&[ChatMessage::new("ipython", "{}")], false),
            "<|start_header_id|>ipython<|end_header_id|>\n\n{}<|eot_id|>"
        );
    }

    #[test]
    fn detect() {
        let llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}\
            {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'\
            + message['content'] | trim + '<|eot_id|>' %}{% endfor %}";
        let bitnet = "{% for message in messages %}{% if message['role'] == 'user' %}\
            {{ 'User: ' + message['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}\
            {% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";
        assert_eq!(
            ChatTemplate::detect_known(Some(llama3)),
            Some(ChatTemplate::Llama3)
        );
        assert_eq!(
            ChatTemplate::detect_known(Some(bitnet)),
            Some(ChatTemplate::BitNet)
        );
        assert_eq!(
            ChatTemplate::detect_known(Some("BITNET template")),
            Some(ChatTemplate::BitNet)
        );
        assert_eq!(ChatTemplate::detect_known(Some("<|im_start|>")), None);
        assert_eq!(ChatTemplate::detect_known(None), None);
        assert_eq!(ChatTemplate::detect(None), ChatTemplate::BitNet);
        assert_eq!(ChatTemplate::detect(Some("")), ChatTemplate::BitNet);
        assert_eq!(ChatTemplate::detect(Some(llama3)).name(), "llama3");
    }
}
