fn main() {
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path).unwrap();
        let t = std::time::Instant::now();
        let r = legate_api::load::check_bootstrap(&text);
        let name = path.rsplit('/').next().unwrap();
        println!("{}\t{name}\t{:?}\t{}", if r.errors.is_empty() { 0 } else { 1 }, t.elapsed(), r.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" | "));
    }
}
