//! Route templates: request paths with their ids replaced, so that RED series stay few.

/// `/users/123/orders/9f8e7d6c5b4a3f2e?x=1` → `/users/{id}/orders/{id}`.
pub fn route_template(target: &str) -> String {
    let end = target
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let path = &target[..end];
    let path = match memchr::memmem::find(path.as_bytes(), b"://") {
        // Absolute-form targets (proxies): keep only the path.
        Some(i) => path[i + 3..]
            .find('/')
            .map(|j| &path[i + 3 + j..])
            .unwrap_or("/"),
        None => path,
    };
    if path.is_empty() {
        return "/".into();
    }
    // Room for a few ids longer as `{id}` than as written, so that the route is allocated once.
    let mut route = String::with_capacity(path.len() + 16);
    let mut start = 0;
    // Segment bounds are at '/' (ASCII), so each slice below is on a char boundary.
    for end in memchr::memchr_iter(b'/', path.as_bytes()).chain([path.len()]) {
        let segment = &path[start..end];
        route.push_str(if looks_like_id(segment) {
            "{id}"
        } else {
            segment
        });
        if end < path.len() {
            route.push('/');
        }
        start = end + 1;
    }
    route
}

fn looks_like_id(segment: &str) -> bool {
    let hex_or_dash = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    !segment.is_empty()
        && (segment.bytes().all(|b| b.is_ascii_digit())
            || (segment.len() == 36 && hex_or_dash(segment) && segment.matches('-').count() == 4)
            || (segment.len() >= 16 && hex_or_dash(segment) && digits > 0))
}
