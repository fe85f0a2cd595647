// njs: the adapter name of an OpenAI request, for NGINX's consistent hash ("" for GETs and bad bodies).
function model(r) {
    try {
        return JSON.parse(r.requestText || "{}").model || "";
    } catch (e) {
        return "";
    }
}

export default { model };
