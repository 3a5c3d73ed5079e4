// C++ under the preload library: containers, arrays, over-aligned types and sized deletes, with
// contents checked; and a request tensorpool refuses still calls the program's new-handler and
// throws std::bad_alloc, as C++ requires (the library passes it to the C++ runtime's own
// operator new, whose exception unwinds through the library's frame).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>

static int handler_calls = 0;
static void handler() {
    if (++handler_calls == 2) std::set_new_handler(nullptr);
}

struct alignas(256) Wide {
    unsigned char bytes[700];
};

int main() {
    int failures = 0;
    Dl_info info;
    void *f = dlsym(RTLD_DEFAULT, "_Znwm");
    if (!f || !dladdr(f, &info) || !std::strstr(info.dli_fname, "tensorpool")) {
        std::printf("FAIL operator new is not the library's\n");
        failures++;
    }
    std::map<int, std::string> m;
    std::vector<std::unique_ptr<Wide>> wides;
    for (int i = 0; i < 20000; i++) {
        m[i] = std::string(static_cast<size_t>(i % 300), static_cast<char>('a' + i % 26));
        auto w = std::make_unique<Wide>();
        if (reinterpret_cast<std::uintptr_t>(w.get()) % 256) failures++;
        std::memset(w->bytes, i & 0xff, sizeof w->bytes);
        wides.push_back(std::move(w));
        if (i % 3 == 0) {
            int *arr = new int[static_cast<size_t>(i % 5000) + 1];
            arr[0] = i;
            delete[] arr;
        }
    }
    for (int i = 0; i < 20000; i++) {
        const std::string &s = m[i];
        if (s.size() != static_cast<size_t>(i % 300)) failures++;
        for (char c : s)
            if (c != 'a' + i % 26) { failures++; break; }
        if (wides[static_cast<size_t>(i)]->bytes[699] != static_cast<unsigned char>(i & 0xff)) failures++;
    }
    std::set_new_handler(handler);
    volatile size_t huge = static_cast<size_t>(1) << 62;
    bool threw = false;
    try {
        char *p = new char[huge];
        p[0] = 1;
        delete[] p;
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    if (!threw || handler_calls != 2) {
        std::printf("FAIL bad_alloc %d, handler calls %d\n", threw, handler_calls);
        failures++;
    }
    char *q = new (std::nothrow) char[huge];
    if (q != nullptr) failures++;
    std::printf("cxx ok, failures %d\n", failures);
    return failures != 0;
}
