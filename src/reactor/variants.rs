//! The forms one shared frame takes on the wire: as published, permessage-deflate compressed, in the application's
//! alternative format, that compressed, and in the application's stream form (streaming HTTP connections). Each form is made at most once per frame, by the first connection that
//! wants it, and shared by reference like the frame itself: a publish costs one compression (and one transcoding)
//! whatever the number of subscribers, and each subscriber still costs one reference and a queue push. A frame
//! for one connection (`Core::queue`) gets its form made for that connection alone.

use super::conn::wire;
use super::core::Core;
use super::handler::Key;
use crate::frame::deflate::split_frame;
use crate::frame::deflate_offer::Agreed;
use crate::pool::OutFrame;
use std::rc::Rc;
use std::sync::Arc;

/// The forms of one frame made so far. `None` = not tried yet; `Some(None)` = tried, the frame stays as it is
/// (under `ws.deflate_threshold`, incompressible, or nothing to transcode).
#[derive(Default)]
pub(super) struct Variants {
    deflated: Option<Option<OutFrame>>,
    alt: Option<Option<OutFrame>>,
    alt_deflated: Option<Option<OutFrame>>,
    stream: Option<OutFrame>,
}

impl<A> Core<A> {
    /// The form of `plain` connection `key` gets.
    pub(super) fn variant(&mut self, key: Key, plain: &OutFrame, forms: &mut Variants) -> OutFrame {
        let wire = self.conns[key].wire;
        if wire & wire::STREAM != 0 {
            let form = self.stream_form;
            return forms
                .stream
                .get_or_insert_with(|| Rc::new(Arc::new(form(plain))))
                .clone();
        }
        let alt = wire & wire::ALT_FORMAT != 0;
        let base = if alt {
            let transcode = self.transcode;
            let made = forms
                .alt
                .get_or_insert_with(|| transcode(plain).map(|f| Rc::new(Arc::new(f))));
            made.as_ref().unwrap_or(plain).clone()
        } else {
            plain.clone()
        };
        let window = wire & wire::WINDOW;
        if window == 0 || !Agreed::takes_compressed(window, base.len()) {
            return base;
        }
        let slot = if alt {
            &mut forms.alt_deflated
        } else {
            &mut forms.deflated
        };
        let made = slot.get_or_insert_with(|| self.compress(&base));
        made.as_ref().unwrap_or(&base).clone()
    }

    /// The compressed form of a frame, or None when it is under `ws.deflate_threshold` or incompressible.
    fn compress(&mut self, plain: &[u8]) -> Option<OutFrame> {
        let threshold = self.limits.deflate_threshold;
        let deflater = self.deflater.get_or_insert_with(Box::default);
        let packed = deflater.compress_frame(plain, threshold)?;
        let payload_len = |f: &[u8]| split_frame(f).map_or(0, |(_, p)| p.len() as u64);
        self.tally.deflate_bytes_in_total += payload_len(plain);
        self.tally.deflate_bytes_out_total += payload_len(&packed);
        Some(Rc::new(Arc::new(packed)))
    }
}
