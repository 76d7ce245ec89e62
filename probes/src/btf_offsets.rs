//! Offsets of struct members in the running kernel, read from its BTF
//! (`/sys/kernel/btf/vmlinux`), for the few fields whose CO-RE relocation aya 0.14 gets wrong:
//! `struct tcp_sock`'s `write_seq` and `copied_seq` (libbpf resolves them; aya poisons the
//! program, "invalid func unknown#195896080"). The kernel side reads them with
//! `bpf_probe_read_kernel` at these offsets (bpf/propagate.h).

/// The byte offsets of `members` (direct members, not bitfields) of the struct `name`.
pub(crate) fn member_offsets(btf: &[u8], name: &str, members: &[&str]) -> Result<Vec<u32>, String> {
    let parsed = Parsed::new(btf)?;
    let mut at = parsed.types_start;
    while at + 12 <= parsed.types_end {
        let name_off = parsed.u32_at(at)?;
        let info = parsed.u32_at(at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let extra = match kind {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => 12 * vlen,
            6 | 13 => 8 * vlen,
            2 | 7..=12 | 16 | 18 => 0,
            other => return Err(format!("BTF type kind {other} at byte {at} is unknown")),
        };
        if kind == 4 && parsed.string(name_off)? == name.as_bytes() {
            return members
                .iter()
                .map(|wanted| parsed.member_offset(at + 12, vlen, kind_flag, wanted))
                .map(|found| found.map_err(|e| format!("struct {name}: {e}")))
                .collect();
        }
        at += 12 + extra;
    }
    Err(format!("the kernel's BTF has no struct {name}"))
}

/// Reads the running kernel's BTF and finds the members there.
pub(crate) fn kernel_member_offsets(name: &str, members: &[&str]) -> Result<Vec<u32>, String> {
    let path = "/sys/kernel/btf/vmlinux";
    let btf = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    member_offsets(&btf, name, members)
}

struct Parsed<'a> {
    btf: &'a [u8],
    types_start: usize,
    types_end: usize,
    strings_start: usize,
    strings_end: usize,
}

impl<'a> Parsed<'a> {
    fn new(btf: &'a [u8]) -> Result<Self, String> {
        let header = |at: usize| -> Result<u32, String> {
            btf.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| "BTF shorter than its header".to_string())
        };
        if btf.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err("not little-endian BTF (no 0xeb9f magic)".into());
        }
        let hdr_len = header(4)? as usize;
        let (type_off, type_len) = (header(8)? as usize, header(12)? as usize);
        let (str_off, str_len) = (header(16)? as usize, header(20)? as usize);
        let parsed = Parsed {
            btf,
            types_start: hdr_len.saturating_add(type_off),
            types_end: hdr_len.saturating_add(type_off).saturating_add(type_len),
            strings_start: hdr_len.saturating_add(str_off),
            strings_end: hdr_len.saturating_add(str_off).saturating_add(str_len),
        };
        if parsed.types_end > btf.len() || parsed.strings_end > btf.len() {
            return Err("BTF sections run past its end".into());
        }
        Ok(parsed)
    }

    fn u32_at(&self, at: usize) -> Result<u32, String> {
        self.btf
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("BTF cut at byte {at}"))
    }

    fn string(&self, offset: u32) -> Result<&'a [u8], String> {
        let start = self.strings_start.saturating_add(offset as usize);
        let strings = self
            .btf
            .get(start..self.strings_end)
            .ok_or_else(|| format!("BTF string offset {offset} is out of range"))?;
        let end = strings
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(strings.len());
        Ok(&strings[..end])
    }

    fn member_offset(
        &self,
        first: usize,
        vlen: usize,
        kind_flag: bool,
        wanted: &str,
    ) -> Result<u32, String> {
        for i in 0..vlen {
            let at = first + 12 * i;
            if self.string(self.u32_at(at)?)? != wanted.as_bytes() {
                continue;
            }
            let raw = self.u32_at(at + 8)?;
            // With kind_flag the top 8 bits are a bitfield's size; these fields are not ones.
            let bits = if kind_flag { raw & 0x00ff_ffff } else { raw };
            if (kind_flag && raw >> 24 != 0) || bits % 8 != 0 {
                return Err(format!("{wanted} is a bitfield"));
            }
            return Ok(bits / 8);
        }
        Err(format!("no member {wanted}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one type: struct `s` { int a at byte 0; int b at byte 8 }.
    fn tiny() -> Vec<u8> {
        let strings = b"\0s\0a\0b\0";
        let mut types = Vec::new();
        for word in [1u32, (4 << 24) | 2, 16, 3, 0, 0, 5, 0, 64] {
            types.extend_from_slice(&word.to_le_bytes());
        }
        let mut btf = vec![0x9f, 0xeb, 1, 0];
        for word in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            btf.extend_from_slice(&word.to_le_bytes());
        }
        btf.extend_from_slice(&types);
        btf.extend_from_slice(strings);
        btf
    }

    #[test]
    fn finds_members_of_a_struct() {
        assert_eq!(member_offsets(&tiny(), "s", &["b", "a"]), Ok(vec![8, 0]));
        assert!(member_offsets(&tiny(), "s", &["c"])
            .unwrap_err()
            .contains("no member c"));
        assert!(member_offsets(&tiny(), "t", &["a"])
            .unwrap_err()
            .contains("no struct t"));
    }

    #[test]
    fn a_cut_or_foreign_blob_is_an_error_not_a_panic() {
        let btf = tiny();
        for len in 0..btf.len() {
            let _ = member_offsets(&btf[..len], "s", &["b"]);
        }
        assert!(member_offsets(b"\x7fELF", "s", &["a"]).is_err());
    }

    #[test]
    fn the_running_kernels_tcp_sock_has_both_sequence_numbers() {
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("SKIPPED: no kernel BTF at /sys/kernel/btf/vmlinux");
            return;
        }
        let offsets = kernel_member_offsets("tcp_sock", &["write_seq", "copied_seq"]).unwrap();
        // Past struct inet_connection_sock, which tcp_sock starts with.
        assert!(offsets.iter().all(|&o| o > 1000 && o < 4096), "{offsets:?}");
        assert_ne!(offsets[0], offsets[1]);
    }
}
